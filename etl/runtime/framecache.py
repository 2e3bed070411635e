"""Small in-process caches of batches between steps, keyed by object key and a content tag.

When the step after a fetch (or a clean) runs in the same process, as it does in embedded
mode, it takes the rows the step before left here instead of reading them back from the
object store (or cutting them again from the source) and decoding them. A cached batch is
only used when its tag (the sha256 or pointer its RawPayload records) matches, and each is
taken once; what is durable is unchanged, so the crash guarantees are too: a step that
finds nothing here reads the durable copy, or rebuilds it (etl.runtime.raw, batches).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

#: Rows kept at most across all cached batches of one cache (memory bound, ~100-300 MB).
MAX_ROWS = 1_000_000


class FrameCache:
    """Bounded LRU of (key, tag) -> a batch (an Arrow table, or what the caller stores),
    bounded by the sum of the batches' weights (rows, unless the caller weighs otherwise)."""

    def __init__(self, *, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._frames: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def put(self, key: str, tag: str, frame: Any, *, rows: int | None = None) -> None:
        """Keep `frame` (`rows` rows; default its num_rows) until taken or pushed out."""
        rows = frame.num_rows if rows is None else rows
        if rows > self.max_rows:
            return
        with self._lock:
            old = self._frames.pop((key, tag), None)
            self._rows -= old[1] if old is not None else 0
            self._frames[(key, tag)] = (frame, rows)
            self._rows += rows
            while self._rows > self.max_rows:
                _, (_, dropped) = self._frames.popitem(last=False)
                self._rows -= dropped

    def pop(self, key: str, tag: str) -> Any | None:
        """The cached batch, removed from the cache (each batch is consumed once)."""
        with self._lock:
            found = self._frames.pop((key, tag), None)
            if found is None:
                return None
            self._rows -= found[1]
            return found[0]

    def clear(self) -> None:
        """Forget every cached batch."""
        with self._lock:
            self._frames.clear()
            self._rows = 0


#: Fetched batches (the source's Batch: its Arrow rows, and the shard's rows they were cut
#: from when a source says so) waiting for their clean.
frames = FrameCache()
#: Cleaned batches (staged Parquet bytes, and the frame for a sink that does not take the
#: bytes) waiting for their load when the run keeps no staged copies
#: (RunContext.staged_copies), weighed in bytes: loads may lag their cleans by every
#: batch a process holds, and a batch pushed out is cleaned again from its raw rows.
CLEANED_BYTES = 1 << 30
cleaned = FrameCache(max_rows=CLEANED_BYTES)
