"""Which local worker process works which shard: each its own share first, then the rest.

Embedded mode forks its worker processes with a share of the shards each (balanced by
rows, largest first). Rows are not time: on a shared machine one process can run a fifth
slower than its twin for the same rows (10x demo: 3.4 s and 3.9 s of work for equal
halves), and the run ends when the last process does. So a process claims each shard just
before working it: its own share largest first, then, once that is done, the shards of
other processes not begun yet, smallest first (they end soonest). A shard is claimed by one
process only (a flag per shard in memory shared by the forks); leases in the state store
still guard the work itself, as in distributed mode.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Sequence


class ShardClaims:
    """One flag per shard, shared by the processes forked after it is made."""

    def __init__(self, shards: int, *, context: Any = None) -> None:
        context = context or multiprocessing.get_context("fork")
        self._flags = context.Array("b", max(shards, 1), lock=True)

    def claim(self, shard: int) -> bool:
        """Take `shard` for this process; False if a process took it before."""
        with self._flags.get_lock():
            if self._flags[shard]:
                return False
            self._flags[shard] = 1
            return True

    def next(self, own: Sequence[int], others: Sequence[int]) -> int | None:
        """The next shard this process should work: the first unclaimed of `own` (in the
        order given), else the last unclaimed of `others`; None when all are claimed."""
        for shard in own:
            if self.claim(shard):
                return shard
        for shard in reversed(others):
            if self.claim(shard):
                return shard
        return None


__all__ = ["ShardClaims"]
