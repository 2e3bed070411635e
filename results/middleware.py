"""Dramatiq middleware recording every ETL message's lifecycle in the result store.

enqueue -> queued; worker picks it up -> in_progress; success -> completed (with what the
actor reported, e.g. rows, or that the dedup ledger made it a no-op), or cancelled when the
actor reported {"cancelled": reason} (acked without work); an error Dramatiq
retries -> retrying, then queued when Retries re-enqueues it; retries exhausted or a
permanent error -> failed (error type and message); worker shutdown with the message
unfinished -> retrying (the broker redelivers it).

Writes never wait on the store: each transition leaves the task's thread at once for the
recorder's writer thread (results.writer), which writes them in batches, in order per job,
at most about 50 ms after they happened (and at once on flush). A store outage is logged,
counted and paused for `cooldown` seconds; a full queue drops writes (counted) rather than
block. Messages still unfinished once the worker's threads stopped are marked retrying (the
broker redelivers them), and the writer is flushed when the worker shuts down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from results.base import ResultStore
from results.changes import NewRecord, StatusChange
from results.models import JobResult, JobStatus, Transition, utcnow
from results.writer import BatchWriter

log = logging.getLogger(__name__)

_reported = threading.local()


def report(result: Any = None, *, progress: float | None = None) -> None:
    """Called by an actor: what to record as its result (and progress) when it succeeds."""
    _reported.value = (result, progress)


def peek_report() -> tuple[Any, float | None]:
    """What the actor of this thread reported, left in place for the ResultRecorder."""
    return getattr(_reported, "value", (None, None))


def _take_report() -> tuple[Any, float | None]:
    value = getattr(_reported, "value", (None, None))
    _reported.value = (None, None)
    return value


class ResultRecorder(Middleware):
    """Write each transition of messages whose actor name starts with `prefix` (all by
    default). ETL actors (etl_*) also get their run id and stage recorded. Records live
    `ttl` (default a day); a message option `results_ttl` (seconds) overrides it per job.
    Writes are batched every `interval` seconds (results.writer.BatchWriter)."""

    def __init__(self, store: ResultStore, *, prefix: str = "", cooldown: float = 5.0,
                 max_queue: int = 100_000, ttl: timedelta | None = None,
                 interval: float = 0.05) -> None:
        self.store = store
        self.ttl = ttl
        self.prefix = prefix
        self.writer = BatchWriter(store, interval=interval, max_queue=max_queue, cooldown=cooldown)
        self._lock = threading.Lock()
        self._in_progress: set[str] = set()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    #: Dramatiq lets actors declare these options (`@dramatiq.actor(results_ttl=60)`).
    actor_options = {"results_ttl"}

    # counts of the writer: changes written, refused by the lifecycle, failed, dropped
    @property
    def writes(self) -> int:
        return self.writer.writes

    @property
    def rejected(self) -> int:
        return self.writer.rejected

    @property
    def failures(self) -> int:
        return self.writer.failures

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    def flush(self, timeout: float | None = None) -> bool:
        """Write every transition submitted so far; True once done (False: timed out)."""
        return self.writer.flush(timeout)

    def _ttl_of(self, broker: dramatiq.Broker, message: dramatiq.Message) -> timedelta | None:
        """How long the message's record lives: its own `results_ttl` option (seconds), its
        actor's, else the recorder's."""
        seconds = message.options.get("results_ttl")
        if seconds is None:
            try:
                seconds = broker.get_actor(message.actor_name).options.get("results_ttl")
            except Exception:  # noqa: BLE001 - an actor this broker does not know
                seconds = None
        return timedelta(seconds=float(seconds)) if seconds is not None else self.ttl

    def _move(self, what: str, job_id: str, status: JobStatus, note: str | None = None, *,
              urgent: bool = False, **fields: Any) -> None:
        self.writer.submit(what, StatusChange(job_id, status.value, note, fields), urgent=urgent)

    def _ours(self, message: dramatiq.Message) -> bool:
        return message.actor_name.startswith(self.prefix)

    # -- hooks ------------------------------------------------------------------------------
    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Submitted before the message is visible to workers, so in this process its
        "queued" is written before their "in_progress" (another process's writer waits for
        a record to appear: results.writer). A re-enqueue by Retries is retrying -> queued."""
        if not self._ours(message):
            return
        retries = message.options.get("retries", 0)
        deferred = message.options.get("etl_deferred")
        if deferred and not delay:
            return  # a deferred message moving from the delay queue: recorded when deferred
        # A re-enqueue's two steps are written at once, not an interval later: the next
        # delivery may start in another process within a short backoff, and its
        # in_progress must find them there.
        if deferred:
            self._move("deferred", message.message_id, JobStatus.RETRYING, f"deferred: {deferred}")
            self._move("requeue", message.message_id, JobStatus.QUEUED, urgent=True)
            return
        if retries:
            last = (message.options.get("traceback") or "").strip().splitlines()[-1:] or [""]
            error_type, _, error = last[0].partition(": ")
            self._move("retrying", message.message_id, JobStatus.RETRYING, last[0] or None,
                       error=error or None, error_type=error_type or None, retry_count=retries)
            self._move("requeue", message.message_id, JobStatus.QUEUED, urgent=True)
            return
        now = utcnow()
        args = list(message.args)
        etl = message.actor_name.startswith("etl_")
        job = JobResult(
            job_id=message.message_id, function=message.actor_name, status=JobStatus.QUEUED.value,
            queue=message.queue_name, run_id=args[0] if etl and args else None,
            args=args, kwargs=dict(message.kwargs),
            stage=message.actor_name.removeprefix("etl_") if etl else None,
            max_retries=message.options.get("max_retries"), created_at=now, queued_at=now,
            history=[Transition(JobStatus.PENDING.value, now), Transition(JobStatus.QUEUED.value, now)])
        self.writer.submit("store", NewRecord(job, self._ttl_of(broker, message)))

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if not self._ours(message):
            return
        with self._lock:
            self._in_progress.add(message.message_id)
        _take_report()
        self._move("start", message.message_id, JobStatus.IN_PROGRESS,
                   worker_id=f"{self.worker_id}:{threading.current_thread().name}",
                   retry_count=message.options.get("retries", 0))

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if not self._ours(message):
            return
        with self._lock:
            self._in_progress.discard(message.message_id)
        reported, progress = _take_report()
        if exception is None and isinstance(reported, dict) and reported.get("deferred"):
            return  # re-enqueued by the actor (lease held elsewhere): before_enqueue recorded it
        if exception is None and isinstance(reported, dict) and reported.get("cancelled"):
            self._move("cancel", message.message_id, JobStatus.CANCELLED, reported["cancelled"],
                       result=reported)  # acked without work (its run was cancelled)
            return
        if exception is None:
            self._move("complete", message.message_id, JobStatus.COMPLETED, result=reported,
                       progress=1.0 if progress is None else progress)
            return
        if not getattr(message, "failed", False):
            return  # Retries re-enqueues it: before_enqueue records retrying -> queued
        self._move("failed", message.message_id, JobStatus.FAILED,
                   f"{type(exception).__name__}: {exception}", error=str(exception),
                   error_type=type(exception).__name__,
                   retry_count=max(0, message.options.get("retries", 1) - 1))  # last attempt counted

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if self._ours(message):
            with self._lock:
                self._in_progress.discard(message.message_id)
            self._move("skip", message.message_id, JobStatus.ABORTED, "skipped by middleware")

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """The worker's threads have finished what they could (their messages are recorded
        completed or failed and acked): what is still unfinished goes back to the broker,
        so it is retrying. Then everything is written before the process may end."""
        with self._lock:
            unfinished = list(self._in_progress)
        for job_id in unfinished:
            self._move("shutdown", job_id, JobStatus.RETRYING,
                       "worker shut down; the broker redelivers it")
        self.flush()
        if self.failures or self.dropped:
            log.warning("result store %s: %d write(s) failed, %d dropped; %d written",
                        self.store.url, self.failures, self.dropped, self.writes)
