"""The object store: where raw payloads, staged batches and quarantine files live.

Keys are plain relative paths ("runs/<run>/raw/shard=0003/batch=000012.parquet"). Writes are
atomic: a reader sees the whole old object or the whole new one, never half a file, so a
crash in the middle of a write leaves nothing a later step could mistake for data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What was written: key, size and content hash (for the RawPayload pointer)."""

    key: str
    bytes: int
    sha256: str


@runtime_checkable
class ObjectStore(Protocol):
    """Small blob store interface shared by local files and S3."""

    url: str  # the store's URL, secrets masked, for messages and logs

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write `data` under `key` atomically, replacing any previous object."""

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises etl.core.errors.ObjectNotFound naming the key."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; no error if it does not exist."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix`, sorted."""

    def uri(self, key: str) -> str:
        """A full, displayable URI of `key` (file:///abs/path or s3://bucket/prefix/key)."""
