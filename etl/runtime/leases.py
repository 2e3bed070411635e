"""Leases: one owner at a time per task, kept alive by a heartbeat, fenced on commit.

Every fetch, clean and load takes the PendingTasks lease of its task before doing anything:
a shard's fetch lane (`fetch:<run>:<shard>`, so one owner at a time walks a shard's cursor)
or one batch's step (`clean:<run>:<shard>:<batch>`, `load:...`). A heartbeat thread per
process renews the leases its threads hold; a worker that dies stops renewing and its
leases expire after the TTL, when the redelivered message of another worker takes over
(with a larger fencing token). An owner proven dead does not make anyone wait that long:
owners are named `host:pid@start:thread`, and a lease whose owner ran on this host and whose
process is gone (its pid free, a zombie, or reused by a process started later;
etl.core.processes) is taken over at once, by the same compare-and-set on its holder.
The commit of a task's effect passes the lease as a Fence,
so an owner that stalled past its lease cannot commit after the takeover; the steps ask
that commit to release the lease too (`release=True`: in the commit's own transaction,
not one more of its own), and the keeper then leaves that lease alone.

Settings, read here (etl.core.config):
  lease_ttl  ETL_LEASE_TTL: seconds a lease lives without a heartbeat (default 30). The
             heartbeat renews every TTL/3. Clocks of the machines must agree to well under
             a TTL.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

from etl.core.config import DEFAULTS, Settings, load_settings, seconds_setting
from etl.core.errors import EtlError
from etl.core.processes import owner_is_dead, process_name
from etl.stores.state import Fence, Lease, StateStore
from etl.stores.state.base import utcnow

log = logging.getLogger(__name__)

DEFAULT_TTL = float(DEFAULTS["lease_ttl"])


class LeaseBusy(EtlError):
    """Another live owner holds the lease of this task; the message is deferred."""

    def __init__(self, task_key: str, holder: str | None, seconds_left: float) -> None:
        self.task_key, self.holder, self.seconds_left = task_key, holder, seconds_left
        super().__init__(f"task {task_key} is leased by {holder} for {seconds_left:.1f} s more")


def lease_ttl(settings: Settings | None = None) -> float:
    """The `lease_ttl` setting in seconds (of `settings`, else as load_settings resolves it)."""
    return seconds_setting(settings or load_settings(), "lease_ttl")


class LeaseKeeper:
    """Takes, renews and releases the leases of one process's worker threads."""

    def __init__(self, state: StateStore, *, ttl: float | None = None) -> None:
        self.state = state
        self.ttl = ttl if ttl is not None else lease_ttl()
        self._process: tuple[int, str] | None = None
        self._held: dict[str, Fence] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def process(self) -> str:
        """`host:pid@start` of this process (computed again in a forked child)."""
        pid = os.getpid()
        if self._process is None or self._process[0] != pid:
            self._process = (pid, process_name(pid))
        return self._process[1]

    def owner(self) -> str:
        """Owner id of the calling thread: host, process (pid and start time) and thread."""
        return f"{self.process}:{threading.get_ident()}"

    def _acquire(self, key: str, owner: str) -> tuple[Lease | None, Lease | None]:
        """(the lease of `key`, taken over at once from a holder proven dead; else None,
        and the holder's lease as last read)."""
        lease = self.state.acquire_lease(key, owner, self.ttl)
        if lease is not None:
            return lease, None
        current = self.state.get_lease(key)
        if current is None or not owner_is_dead(current.taken_by):
            return None, current
        lease = self.state.acquire_lease(key, owner, self.ttl, take_from=current.taken_by)
        if lease is None:  # someone took it over first: report them
            return None, self.state.get_lease(key)
        log.info("took lease %s over from %s, whose process is gone", key, current.taken_by)
        return lease, None

    @contextmanager
    def hold(self, key: str) -> Iterator[Fence]:
        """Hold the lease of `key` for the duration of the block; raise LeaseBusy when another
        live owner has it. The yielded Fence goes to the commit that ends the task."""
        owner = self.owner()
        lease, current = self._acquire(key, owner)
        if lease is None:
            left = self.ttl
            holder = None
            if current is not None and current.lease_until is not None:
                left = max(0.0, (current.lease_until - utcnow()).total_seconds())
                holder = current.taken_by
            raise LeaseBusy(key, holder, left)
        fence = Fence(key, owner, lease.token)
        with self._lock:
            self._held[key] = fence
            self._ensure_heartbeat()
        try:
            yield fence
        finally:
            with self._lock:
                self._held.pop(key, None)
            try:
                if not fence.released:  # else the commit ended it (release=True)
                    self.state.release_lease(key, owner, lease.token)
            except Exception:  # noqa: BLE001 - an unreleased lease just expires
                log.warning("could not release lease %s; it expires in %.0f s", key, self.ttl,
                            exc_info=True)

    @contextmanager
    def queue_on(self, key: str, *, patience: float) -> Iterator[Fence]:
        """Hold the lease of `key` for the block, waiting (up to `patience` seconds, then
        LeaseBusy) while other owners hold it: a queue of loads on one destination."""
        deadline, pause = time.monotonic() + patience, 0.01
        with ExitStack() as stack:
            while True:
                try:
                    fence = stack.enter_context(self.hold(key))
                    break
                except LeaseBusy:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(pause * random.uniform(0.5, 1.0))
                    pause = min(pause * 1.5, 0.2)
            yield fence

    def _ensure_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._beat, name="etl-lease-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._wake.wait(self.ttl / 3):
            with self._lock:
                held = [fence for fence in self._held.values() if not fence.released]
            for fence in held:
                try:
                    if not self.state.renew_lease(fence.task_key, fence.owner, fence.token,
                                                  self.ttl) and self._holds(fence):
                        log.warning("lease %s was lost (expired and taken over?); the task "
                                    "will not commit", fence.task_key)
                except Exception:  # noqa: BLE001 - keep beating; the lease may still live
                    log.warning("heartbeat of lease %s failed", fence.task_key, exc_info=True)

    def _holds(self, fence: Fence) -> bool:
        """Whether `fence` is still held (not released since the heartbeat listed it, by its
        holder or by the commit that ended its task)."""
        with self._lock:
            return self._held.get(fence.task_key) is fence and not fence.released

    def close(self) -> None:
        self._wake.set()
