"""The result recorder's writer thread: changes leave the task's thread at once and reach
the store in batches.

A worker thread's `submit` appends to a list under a lock and returns; it wakes the writer
only when the list was empty. The writer then waits `interval` seconds (default 50 ms) for
more to come, and hands everything gathered (up to `max_batch`) to the store's `write_many`:
one transaction (SQLite), pipeline (Redis) or bulk write (MongoDB) for what took several
per message. So a record is readable at most about `interval` plus one write after its
event, and the store is asked once per interval instead of three times per message.

Rules kept from writing one by one:
* Per job, changes reach the store in the order they were submitted.
* A store outage never fails or stalls a task: the batch is counted as failed, logged, and
  the store is left alone for `cooldown` seconds (what comes meanwhile is dropped, counted).
  A lifecycle refusal (InvalidTransition) is counted as rejected and logged.
* A status change whose record is not there yet (JobNotFound) is kept and tried again with
  the next batches for `grace` seconds (30): the record may be on its way from another
  process (the sender writes "queued" from its own writer, an interval late or, behind a
  busy store, seconds late), and giving up would leave it "queued" after its message was
  done (2 s was too short under load).
* `flush()` (at worker shutdown, when a sender closes, and at exit) returns once everything
  submitted so far is written, refused or given up.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import Any, Sequence

from etl.core.errors import EtlError
from etl.core.urls import mask_url
from results.changes import Change, StatusChange, write_changes
from results.errors import JobNotFound

log = logging.getLogger(__name__)

#: Seconds a flush waits for the record of a parked change (see BatchWriter._write).
FLUSH_GRACE = 2.0

#: Writers alive in this process: flushed at exit, reset in a forked child.
_WRITERS: "weakref.WeakSet[BatchWriter]" = weakref.WeakSet()


class BatchWriter:
    """Writes changes to a result store from one background thread per process, in batches."""

    def __init__(self, store: Any, *, interval: float = 0.05, max_batch: int = 1000,
                 max_queue: int = 100_000, cooldown: float = 5.0, grace: float = 30.0) -> None:
        self.store = store
        self.interval, self.max_batch, self.max_queue = interval, max_batch, max_queue
        self.cooldown, self.grace = cooldown, grace
        self.writes = self.rejected = self.failures = self.dropped = self.batches = 0
        self.write_seconds = 0.0  # in the store's write_many, over `batches` batches
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        """A fresh state and no thread: at start, and in a forked child (whose copy of the
        parent's queue is the parent's to write)."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._queue: list[tuple[str, Change]] = []
        self._parked: list[tuple[str, Change]] = []  # waiting for their record to appear
        self._done: dict[int, threading.Event] = {}  # by id(change): write_now waits on it
        self._pending = 0  # submitted, not yet written, refused or given up
        self._hurry = False  # a flush waits: no interval until everything is written
        self._urgent = False  # an urgent change waits: no interval for the batch it joins
        self._quiet_until = 0.0
        self._thread: threading.Thread | None = None

    # -- the callers' side ---------------------------------------------------------------
    def submit(self, what: str, change: Change, *, urgent: bool = False,
               done: threading.Event | None = None) -> None:
        """Queue `change` (`what` names it in log lines); never blocks on the store.
        `urgent`: write the batch it joins without waiting out the interval (a retry's
        retrying -> queued: rare, and another process may pick the retry up within a
        backoff shorter than an interval). `done` is set once the change is written,
        refused, given up or dropped (see write_now)."""
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                if done is not None:
                    done.set()
                return
            if done is not None:
                self._done[id(change)] = done
            self._queue.append((what, change))
            self._pending += 1
            self._urgent = self._urgent or urgent
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="etl-results", daemon=True)
                self._thread.start()
            elif urgent or len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._wake.notify()

    def write_now(self, what: str, change: Change, *, timeout: float) -> bool:
        """Submit `change` urgently and wait, at most `timeout` seconds, until it is written,
        refused or given up (True) - for an end that must be stored before its message is
        acked. A store outage does not hold it: a paused or failing writer answers at once."""
        done = threading.Event()
        self.submit(what, change, urgent=True, done=done)
        return done.wait(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Write what was submitted so far without waiting for the interval; wait until
        it is written, refused or given up (True), or `timeout` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._thread is None:
                return self._pending == 0
            self._hurry = True
            self._wake.notify()
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
            return True

    # -- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._gather()
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - the writer must outlive any surprise
                log.exception("result store %s: writing %d change(s) failed", self.store.url,
                              len(batch))
                self._settle(len(batch), batch)

    def _gather(self) -> list[tuple[str, Change]]:
        """Wait for changes, then up to `interval` for more (unless a flush hurries it or
        the batch is full). Parked changes come first, being older than anything queued,
        and are tried again every `interval` even when nothing new comes."""
        with self._lock:
            while not self._queue:
                if not self._parked:
                    self._wake.wait()
                elif not self._wake.wait(self.interval):
                    break  # time to try the parked ones again
            if self._queue:
                until = time.monotonic() + self.interval
                while not (self._hurry or self._urgent) and len(self._queue) < self.max_batch:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            room = max(0, self.max_batch - len(self._parked))
            batch, self._queue = self._parked + self._queue[:room], self._queue[room:]
            self._parked, self._urgent = [], False
            return batch

    def _write(self, batch: list[tuple[str, Change]]) -> None:
        if not batch:
            return
        if time.monotonic() < self._quiet_until:
            with self._lock:
                self.failures += len(batch)
            self._settle(len(batch), batch)
            return
        started = time.perf_counter()
        try:
            outcomes = write_changes(self.store, [change for _, change in batch])
        except Exception as exc:  # noqa: BLE001 - an outage of the store must not reach a task
            with self._lock:
                self.failures += len(batch)
                self._quiet_until = time.monotonic() + self.cooldown
            log.warning("result store %s: %d write(s) (%s) failed (%s: %s); the task goes on, "
                        "writes paused for %.0f s", self.store.url, len(batch),
                        ", ".join(sorted({what for what, _ in batch})), type(exc).__name__,
                        mask_url(str(exc)), self.cooldown)
            self._settle(len(batch), batch)
            return
        parked: list[tuple[str, Change]] = []
        written = rejected = 0
        now = time.time()
        # A flush (a worker stopping) waits for a missing record's change at most
        # FLUSH_GRACE seconds after it happened, not the whole grace.
        grace = min(self.grace, FLUSH_GRACE) if self._hurry else self.grace
        for (what, change), outcome in zip(batch, outcomes):
            if outcome is None:
                written += 1
            elif (isinstance(outcome, JobNotFound) and isinstance(change, StatusChange)
                  and now - change.at.timestamp() < grace):
                parked.append((what, change))
            else:
                rejected += 1
                self._refused(what, outcome)
        with self._lock:
            self.writes += written
            self.rejected += rejected
            self.batches += 1
            self.write_seconds += time.perf_counter() - started
            self._parked = parked + self._parked
        parked_ids = {id(change) for _, change in parked}
        self._settle(len(batch) - len(parked),
                     [item for item in batch if id(item[1]) not in parked_ids])

    def _refused(self, what: str, error: EtlError) -> None:
        log.warning("result store %s: %s refused: %s", self.store.url, what, error)

    def _settle(self, count: int, batch: Sequence[tuple[str, Change]] = ()) -> None:
        with self._lock:
            if self._done:
                for _, change in batch:
                    done = self._done.pop(id(change), None)
                    if done is not None:
                        done.set()
            self._pending -= count
            if not self._pending:
                self._hurry = False
                self._idle.notify_all()


def counters() -> dict[str, float]:
    """The counts of every writer in this process, summed (for Prometheus:
    etl.runtime.metrics): changes written, refused, failed, dropped; batches and seconds."""
    total = {"writes": 0.0, "rejected": 0.0, "failures": 0.0, "dropped": 0.0, "batches": 0.0,
             "write_seconds": 0.0}
    for writer in list(_WRITERS):
        for name in total:
            total[name] += getattr(writer, name)
    return total


def _flush_all(timeout: float = 5.0) -> None:
    """At exit: what the writers hold is written before the process ends (daemon threads
    are not waited for)."""
    for writer in list(_WRITERS):
        try:
            writer.flush(timeout)
        except Exception:  # noqa: BLE001 - exiting anyway
            log.exception("result store: flush at exit failed")


def _forked() -> None:
    for writer in list(_WRITERS):
        writer._reset()


atexit.register(_flush_all)
os.register_at_fork(after_in_child=_forked)
