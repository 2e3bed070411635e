"""Local-file object store (the embedded default): atomic writes by write-then-rename.

A write goes to a temporary file in the target's directory, is flushed and fsynced, then
renamed over the target (`etl.core.files.atomic_write`): a reader, or the next run after a crash,
sees the whole old object or the whole new one. Temporary files a crash leaves behind are
never listed.

Key rules (shared with the S3 store, so a key valid on one backend is valid on the other):
relative paths of non-empty segments, no "." or ".." segment, no segment that looks like
one of our temporary files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from etl.core.errors import ObjectNotFound
from etl.core.files import TEMP_PREFIX, atomic_write
from etl.stores.objects.base import ObjectInfo


def _bad_segment(segment: str) -> bool:
    return segment in ("", ".", "..") or segment.startswith(TEMP_PREFIX) or "\\" in segment


def check_key(key: str) -> str:
    """`key` if it is a valid object key, else ValueError (keys never leave the store's root)."""
    if not isinstance(key, str) or not key or key.startswith("/") \
            or any(_bad_segment(s) for s in key.split("/")):
        raise ValueError(f"invalid object key {key!r}: must be a relative path inside the store "
                         "(no empty, '.' or '..' segments)")
    return key


def check_prefix(prefix: str) -> str:
    """`prefix` if it is a valid listing prefix: "" or the start of a valid key (it may end
    with "/" or in the middle of a segment)."""
    if prefix:
        head, _, _ = prefix.rpartition("/")
        if prefix.startswith("/") or (head and any(_bad_segment(s) for s in head.split("/"))) \
                or prefix.rsplit("/", 1)[-1] in (".", ".."):
            raise ValueError(f"invalid object key prefix {prefix!r}: must be a relative path "
                             "inside the store")
    return prefix


class LocalObjectStore:
    """Objects are files under a root directory; keys are relative paths.

    `url` is `file://relative/dir`, `file:///abs/dir` or a plain path; a relative one is
    resolved against the current directory once, here.
    """

    def __init__(self, url: str) -> None:
        path = url[len("file://"):] if url.startswith("file://") else url
        self.root = Path(path or ".").resolve()
        self.url = f"file://{self.root}"

    def __repr__(self) -> str:
        return f"LocalObjectStore({self.url!r})"

    def path(self, key: str) -> Path:
        """The file of `key` (local-only convenience); ValueError for keys that would be
        absolute or climb out of the root."""
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        atomic_write(self.path(key), data)
        return ObjectInfo(key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key, self.url) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        target = self.path(key)
        if target.is_file():
            target.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` as a string (like S3: "runs/r/raw" also matches
        "runs/r/raw2/x"), sorted; temporary files are skipped."""
        head = check_prefix(prefix).rpartition("/")[0]
        start = self.root / head if head else self.root
        if not start.is_dir():
            return iter(())
        keys = []
        for file in start.rglob("*"):
            if file.name.startswith(TEMP_PREFIX) or not file.is_file():
                continue
            key = file.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                keys.append(key)
        return iter(sorted(keys))

    def uri(self, key: str) -> str:
        """file:///abs/path of `key`."""
        return f"file://{self.path(key)}"
