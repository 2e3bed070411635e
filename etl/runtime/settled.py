"""Steps this process has seen in the dedup ledger, so a duplicate is settled without a read.

The ledger (TaskDedup) only ever grows: once a batch's clean or load is recorded there it is
done for good, so a "done" answer read from it may be remembered by the process for the
life of its run contexts. Only answers the ledger gave are remembered, never "not done", so
a batch that still has work is always looked up in the ledger and never skipped.

Why: a duplicate (a redelivery, a re-sent step) is settled by one ledger read; on SQLite
that read releases the GIL several times, and each time the worker thread waits to get it
back behind the broker's consumer thread. A duplicate seen again in the same process (the
same message redelivered, a reconciler re-sending) now costs a dictionary lookup.
"""

from __future__ import annotations

import threading

#: A step: (stage, run id, shard, batch).
Step = tuple[str, str, int, int]


class SettledSteps:
    """A bounded set of steps the dedup ledger said were done (oldest forgotten first)."""

    def __init__(self, limit: int = 50_000) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._steps: dict[Step, None] = {}
        self._lock = threading.Lock()

    def __contains__(self, step: Step) -> bool:
        return step in self._steps  # a dict lookup is atomic under the GIL

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: Step) -> None:
        """Remember that the ledger holds `step`; call only with what the ledger answered."""
        with self._lock:
            if step in self._steps:
                return
            if len(self._steps) >= self.limit:
                del self._steps[next(iter(self._steps))]
            self._steps[step] = None
