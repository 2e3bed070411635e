"""A small in-process cache of fetched batches (Arrow tables), keyed by object key and content hash.

When the step after a fetch (or a clean) runs in the same process, as it does in embedded
mode, it gets the rows it would otherwise read back from the object store and decode.
The object is still written first and the cache is only read when the recorded sha256
matches, so the claim check and the crash guarantees are unchanged; this only saves a read and a decode.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import pyarrow as pa

#: Rows kept at most across all cached frames (memory bound, about 100-300 MB).
MAX_ROWS = 1_000_000


class FrameCache:
    """Bounded LRU of (key, sha256) -> DataFrame."""

    def __init__(self, *, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._frames: OrderedDict[tuple[str, str], pa.Table] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def put(self, key: str, sha256: str, frame: pa.Table) -> None:
        if frame.num_rows > self.max_rows:
            return
        with self._lock:
            old = self._frames.pop((key, sha256), None)
            self._rows -= old.num_rows if old is not None else 0
            self._frames[(key, sha256)] = frame
            self._rows += frame.num_rows
            while self._rows > self.max_rows:
                _, dropped = self._frames.popitem(last=False)
                self._rows -= dropped.num_rows

    def pop(self, key: str, sha256: str) -> pa.Table | None:
        """The cached frame, removed from the cache (each batch is consumed once)."""
        with self._lock:
            frame = self._frames.pop((key, sha256), None)
            if frame is not None:
                self._rows -= frame.num_rows
            return frame


frames = FrameCache()
