"""Run control: cancel a run, purge its pending messages, and the check every batch step
makes before it works.

Cancelling writes one thing, the run's status `cancelled` in the state store; everything
else follows from it:

* every batch step looks at that status (through a per-process `CancelWatch`, which reads
  it at most once a second per run, so the hot path pays a dictionary lookup) and a step of
  a cancelled run is acknowledged without work, its record ending `cancelled`, its pipeline
  not piped on;
* a step already working when the run is cancelled finishes (its load commits or rolls
  back as ever, its lease is released): a cancel never cuts a batch in half, so checkpoints,
  dedup ledger and sink stay in step;
* an embedded `etl run` sees the status on its next poll and stops its worker processes
  once their current steps end; a followed distributed run stops following;
* `etl run --resume` (runner `resume=True`) sets the run running again and sends what the
  checkpoints say is missing; what was loaded before is in the dedup ledger, so nothing is
  loaded twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etl.core.errors import ConfigError, EtlError
from etl.core.statuses import RunStatus

if TYPE_CHECKING:
    from dramatiq import Message

    from etl.core.config import Settings
    from etl.stores.state import RunRecord, StateStore
    from results.base import ResultStore

log = logging.getLogger(__name__)

#: Longest a process goes on believing a run's status after it changed (seconds): how late
#: a worker may notice a cancel, and how long a resume waits before it sends work, so that
#: no worker acks the resumed run's messages on a stale "cancelled".
CHECK_EVERY_S = 1.0

#: Exit status of `etl run` when the run is cancelled (while it works, or before it starts
#: without --resume).
EXIT_CANCELLED = 4


class RunCancelled(EtlError):
    """Work asked of a cancelled run without `resume`."""

    def __init__(self, run_id: str, *, newest: bool = False) -> None:
        self.run_id = run_id
        which = "the newest run of this pipeline, " if newest else ""
        super().__init__(f"run {run_id} ({which}cancelled) is not taken up: --resume takes it "
                         "up again where it stopped, --fresh starts a new run")


class CancelWatch:
    """Which runs are cancelled, as this process last read it: each run's status is read from
    the state store at most once every `every` seconds, whatever the number of messages."""

    def __init__(self, *, every: float = CHECK_EVERY_S) -> None:
        self.every = every
        self._seen: dict[str, tuple[bool, float]] = {}  # run id -> (cancelled, when read)
        self._lock = threading.Lock()

    def cancelled(self, run_id: str, state: "StateStore") -> bool:
        seen = self._seen.get(run_id)  # a dict read is atomic under the GIL
        now = time.monotonic()
        if seen is not None and now - seen[1] < self.every:
            return seen[0]
        with self._lock:  # one reader per process refreshes; the others wait for its answer
            seen = self._seen.get(run_id)
            if seen is not None and time.monotonic() - seen[1] < self.every:
                return seen[0]
            run = state.get_run(run_id)
            flag = run is not None and run.status == RunStatus.CANCELLED
            self._seen[run_id] = (flag, time.monotonic())
            if flag and (seen is None or not seen[0]):
                log.info("run %s is cancelled: its messages are acked without work", run_id)
            return flag


def is_cancelled(state: "StateStore", run_id: str) -> bool:
    """The run's status is `cancelled` now (one read)."""
    run = state.get_run(run_id)
    return run is not None and run.status == RunStatus.CANCELLED


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did."""

    run_id: str
    #: The run's status before (`cancelled` when it was cancelled already).
    was: str
    #: Pending messages removed from the broker's queue (with `purge`).
    purged: int = 0

    @property
    def already(self) -> bool:
        return self.was == RunStatus.CANCELLED


def cancel_run(state: "StateStore", run_id: str, *,
               results: "ResultStore | None" = None) -> Cancelled:
    """Mark `run_id` cancelled. A completed run cannot be cancelled (ConfigError), nor one
    whose every shard turns out loaded once it is marked: its status goes back to what it
    was and its finalizing marks it completed (a last load landing during a cancel wins). A
    cancelled run is left as it is. The run's own result record (an embedded run's
    `etl.run` task) ends `cancelled` if it is still open."""
    from etl.runtime.runs import run_complete

    run = state.get_run(run_id)
    if run is None:
        raise ConfigError(f"run {run_id!r} not found in {state.url}")
    if run.status == RunStatus.COMPLETED:
        raise ConfigError(f"run {run_id} is completed: there is nothing to cancel")
    if run.status != RunStatus.CANCELLED:
        state.set_run_status(run_id, RunStatus.CANCELLED)
        if run_complete(state, run):  # its last load landed meanwhile: complete wins
            now = state.get_run(run_id)
            if now is not None and now.status == RunStatus.CANCELLED:  # not finalized yet
                state.set_run_status(run_id, run.status)
            raise ConfigError(f"run {run_id} has every shard loaded: there is nothing to cancel")
        log.info("run %s cancelled (was %s)", run_id, run.status)
    if results is not None:
        close_run_record(results, run_id)
    return Cancelled(run_id, str(run.status))


def close_run_record(results: "ResultStore", run_id: str) -> None:
    """End the run's own result record (job id = run id) `cancelled` if it is open; a
    result-store outage is logged, never raised (as everywhere results are written)."""
    from results.models import FINISHED, JobStatus

    try:
        status = results.get_status(run_id)
        if status is not None and status not in FINISHED:
            results.update_status(run_id, JobStatus.CANCELLED.value, note="run cancelled")
    except Exception as exc:  # noqa: BLE001 - the result store is never worth a failed cancel
        log.warning("result store %s: run record of %s not closed (%s: %s)", results.url,
                    run_id, type(exc).__name__, exc)


def run_queue(settings: "Settings", run: "RunRecord") -> str:
    """The queue the run's messages travel on: its pipeline's own, else the `queue` setting."""
    from etl.pipeline import load_pipeline

    spec = run.params.get("pipeline_spec")
    if spec and not str(spec).startswith("(python)"):
        try:
            return load_pipeline(spec).queue_or(settings.queue)
        except EtlError as exc:
            log.warning("cannot tell the queue of run %s (%s); using %s", run.run_id, exc,
                        settings.queue)
    return settings.queue


def purge_run(settings: "Settings", state: "StateStore", run_id: str, *,
              queue: str | None = None, results: "ResultStore | None" = None) -> int:
    """Remove the run's pending messages from its queue (and that queue's delay queue) on the
    configured broker, leaving every other run's; their result records end `cancelled`. How
    many were removed."""
    from etl.brokers import is_embedded, open_broker
    from etl.brokers.base import of_run
    from etl.brokers.purge import purge_matching

    if is_embedded(settings.broker_url):
        raise ConfigError("no broker configured (stub://): an embedded run's messages live "
                          "inside its `etl run`; set ETL_BROKER_URL to amqp://... or redis://...")
    if queue is None:
        run = state.get_run(run_id)
        if run is None:
            raise ConfigError(f"run {run_id!r} not found in {state.url}")
        queue = run_queue(settings, run)
    broker = open_broker(settings.broker_url)
    try:
        removed = purge_matching(broker, queue, match=of_run(run_id))
    finally:
        broker.close()
    if results is not None and removed:
        _close_records(results, removed)
    return len(removed)


def _close_records(results: "ResultStore", messages: "list[Message]") -> None:
    """The records of purged messages end `cancelled` (a record already finished, or never
    written, is left alone)."""
    from results.changes import StatusChange
    from results.models import JobStatus

    changes = [StatusChange(m.message_id, JobStatus.CANCELLED.value, "purged from the queue")
               for m in messages]
    try:
        for start in range(0, len(changes), 1000):
            results.write_many(changes[start:start + 1000])
    except Exception as exc:  # noqa: BLE001 - the messages are gone; say the records are not
        log.warning("result store %s: records of %d purged message(s) not closed (%s: %s)",
                    results.url, len(changes), type(exc).__name__, exc)


__all__ = ["CHECK_EVERY_S", "EXIT_CANCELLED", "CancelWatch", "Cancelled", "RunCancelled",
           "cancel_run", "close_run_record", "is_cancelled", "purge_run", "run_queue"]
