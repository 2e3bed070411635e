"""Local-file object store (the embedded default): atomic writes by write-then-rename."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from etl.errors import ObjectNotFound
from etl.files import TEMP_PREFIX, atomic_write
from etl.objects.base import ObjectInfo


class LocalObjectStore:
    """Objects are files under a root directory; keys are relative paths."""

    def __init__(self, url: str) -> None:
        path = url[len("file://"):] if url.startswith("file://") else url
        self.root = Path(path or ".").resolve()
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        """The file of `key`; keys may not be absolute or climb out of the root."""
        if not key or key.startswith("/") or ".." in Path(key).parts:
            raise ValueError(f"invalid object key {key!r}: must be a relative path inside the store")
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        atomic_write(self.path(key), data)
        return ObjectInfo(key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key, self.url) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix and not prefix.endswith("/") else self.root / prefix
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return iter(())
        keys = (p.relative_to(self.root).as_posix() for p in start.rglob("*")
                if p.is_file() and not p.name.startswith(TEMP_PREFIX))
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def uri(self, key: str) -> str:
        return f"file://{self.path(key)}"
