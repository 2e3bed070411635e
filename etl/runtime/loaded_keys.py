"""Key columns of the batches this process loaded, kept for the run's key audit.

A sink that counts keys held in more than one batch (etl.sinks.base.KeyAudit: the
ParquetSink's "keys in more than one batch") read the key columns back from every part
file of every shard written in several files once the run ended: ~0.8 ms a file, serial,
on the run's critical path (180 files of the demo: ~0.14 s of CPU; a run of 3.4M rows in
small batches, seconds). In embedded mode a process loads whole shards, and the key
columns of a batch are at hand when its clean encodes it: kept here (a zero-copy
selection of the encoded Arrow table), a shard's count is made by the process that loaded
every one of its batches, from memory, as the shard's last load completes (and frees
them), or when its work ends.

What this process cannot vouch for is read from the files as before: a shard some of
whose batches were loaded by another process or an earlier invocation (a resume, a
restart), a batch whose load took its rows from anywhere but this process's clean, or
anything beyond MAX_ROWS key rows. The only batch of a shard keeps no keys (none can be in
another batch), just the fact that it was loaded here. Keys of one shard never meet keys of another (the key
holds the shard columns: the sink checks that before it uses a count), so the run's count
is the sum of its shards' counts.
"""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

from etl.core.lazy import LazyModule
from etl.stores.state import Checkpoint

pa = LazyModule("pyarrow")

#: Key rows kept at most per process; beyond, the run's shards are counted from the files.
MAX_ROWS = 20_000_000


class LoadedKeys:
    """Per run and shard: the key columns of each batch cleaned (staged) and then loaded
    by this process."""

    def __init__(self, *, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._staged: dict[tuple[str, int, int], pa.Table] = {}
        self._loaded: dict[tuple[str, int], dict[int, pa.Table]] = {}
        self._full: set[str] = set()  # runs past max_rows: counted from the files
        self._counted: dict[tuple[str, int], int] = {}  # shards settled as they completed
        self._rows = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Key rows kept, across runs."""
        return self._rows

    def stage(self, run_id: str, shard: int, batch: int, keys: pa.Table) -> None:
        """The key columns of a batch just cleaned, for its load in this process."""
        with self._lock:
            if run_id in self._full:
                return
            if self._rows + keys.num_rows > self.max_rows:
                self._forget(run_id)
                self._full.add(run_id)
                return
            old = self._staged.pop((run_id, shard, batch), None)
            self._rows += keys.num_rows - (old.num_rows if old is not None else 0)
            self._staged[(run_id, shard, batch)] = keys

    def loaded(self, run_id: str, shard: int, batch: int) -> None:
        """The batch staged here was written to the sink from this process's clean."""
        with self._lock:
            keys = self._staged.pop((run_id, shard, batch), None)
            if keys is not None:
                self._loaded.setdefault((run_id, shard), {})[batch] = keys

    def unstaged(self, run_id: str, shard: int, batch: int) -> None:
        """The batch's load took its rows from elsewhere: its keys here do not vouch."""
        with self._lock:
            keys = self._staged.pop((run_id, shard, batch), None)
            self._rows -= keys.num_rows if keys is not None else 0

    def settle(self, run_id: str, checkpoint: Checkpoint, key: Sequence[str]) -> None:
        """The shard of `checkpoint` is complete: count its keys now, if this process
        loaded all of its batches, and free what it kept of them either way."""
        with self._lock:
            batches = self._loaded.pop((run_id, checkpoint.shard), None)
            if batches is None:
                return
            self._rows -= sum(t.num_rows for t in batches.values())
        count = _count(batches, checkpoint, key)
        if count is not None:
            with self._lock:
                if run_id not in self._full:
                    self._counted[(run_id, checkpoint.shard)] = count

    def counts(self, run_id: str, checkpoints: Iterable[Checkpoint],
               key: Sequence[str]) -> dict[int, int]:
        """Keys in more than one batch, per shard of `run_id` whose every batch (as the
        checkpoints record them: fetched to the end, all loaded) this process loaded:
        those settled as they completed, and the others counted now."""
        with self._lock:
            shards = {s: dict(b) for (r, s), b in self._loaded.items() if r == run_id}
            found = {s: n for (r, s), n in self._counted.items() if r == run_id}
        for checkpoint in checkpoints:
            batches = shards.get(checkpoint.shard)
            if batches is not None and checkpoint.shard not in found:
                count = _count(batches, checkpoint, key)
                if count is not None:
                    found[checkpoint.shard] = count
        return found

    def forget(self, run_id: str) -> None:
        """Drop what is kept of `run_id` (its audit is done, or cannot use it)."""
        with self._lock:
            self._forget(run_id)
            self._full.discard(run_id)

    def _forget(self, run_id: str) -> None:
        for item in [k for k in self._counted if k[0] == run_id]:
            del self._counted[item]
        for item in [k for k in self._staged if k[0] == run_id]:
            self._rows -= self._staged.pop(item).num_rows
        for item in [k for k in self._loaded if k[0] == run_id]:
            self._rows -= sum(t.num_rows for t in self._loaded.pop(item).values())


def _count(batches: dict[int, pa.Table], checkpoint: Checkpoint, key: Sequence[str]) -> int | None:
    """Keys of a shard in more than one of its batches; None unless `batches` are all of
    them (the shard fetched to its end, every batch loaded)."""
    from etl.sinks.parquet_keys import keys_in_several

    if (not checkpoint.fetch_done or checkpoint.batches_loaded != checkpoint.batches_fetched
            or set(batches) != set(range(checkpoint.batches_fetched))):
        return None
    return keys_in_several([batches[b] for b in sorted(batches)], key)


#: This process's keys (a forked worker process starts with an empty copy).
LOADED_KEYS = LoadedKeys()
