"""Dramatiq middleware recording every ETL message's lifecycle in the result store.

enqueue -> queued; worker picks it up -> in_progress; success -> completed (with what the
actor reported, e.g. rows, or that the dedup ledger made it a no-op); an error Dramatiq
retries -> retrying, then queued when Retries re-enqueues it; retries exhausted or a
permanent error -> failed (error type and message); worker shutdown with the message
unfinished -> retrying (the broker redelivers it).

A result-store outage must never fail or stall a task: writes leave the task's thread at once
for one writer thread per process (in order, so a job's transitions apply in sequence), every
write is guarded, failures are logged and counted, and after one failure the store is left
alone for `cooldown` seconds. A full queue drops writes (counted) rather than block. The
queue is flushed when the worker shuts down.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from datetime import timedelta
from typing import Any, Callable

import dramatiq
from dramatiq.middleware import Middleware

from etl.core.errors import EtlError
from results.base import ResultStore
from results.models import JobResult, JobStatus, Transition, utcnow

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
    `ttl` (default a day); a message option `results_ttl` (seconds) overrides it per job."""

    def __init__(self, store: ResultStore, *, prefix: str = "", cooldown: float = 5.0,
                 max_queue: int = 100_000, ttl: timedelta | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.prefix = prefix
        self.cooldown = cooldown
        self.failures = 0
        self.rejected = 0
        self.dropped = 0
        self.writes = 0
        self._quiet_until = 0.0
        self._lock = threading.Lock()
        self._in_progress: set[str] = set()
        self._queue: queue.Queue[tuple[str, Callable[[], Any]]] = queue.Queue(max_queue)
        self._writer: threading.Thread | None = None
        self._writer_pid = 0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    #: Dramatiq lets actors declare these options (`@dramatiq.actor(results_ttl=60)`).
    actor_options = {"results_ttl"}

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

    # -- the writer thread ------------------------------------------------------------------
    def _submit(self, what: str, call: Callable[[], Any]) -> None:
        with self._lock:
            if self._writer is None or self._writer_pid != os.getpid():  # new, or forked
                self._queue = queue.Queue(self._queue.maxsize)
                self._writer = threading.Thread(target=self._drain, name="etl-results", daemon=True)
                self._writer_pid = os.getpid()
                self._writer.start()
        try:
            self._queue.put_nowait((what, call))
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def _drain(self) -> None:
        while True:
            what, call = self._queue.get()
            try:
                self._guard(what, call)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every submitted write is done (or given up)."""
        if self._writer is not None and self._writer_pid == os.getpid():
            self._queue.join()

    # -- guarded writes -------------------------------------------------------------------
    def _guard(self, what: str, call: Callable[[], Any]) -> None:
        if time.monotonic() < self._quiet_until:
            with self._lock:
                self.failures += 1
            return
        try:
            call()
            with self._lock:
                self.writes += 1
        except EtlError as exc:  # the store answered: a lifecycle mismatch, not an outage
            with self._lock:
                self.rejected += 1
            log.warning("result store %s: %s refused: %s", self.store.url, what, exc)
        except Exception as exc:  # noqa: BLE001 - an outage of the store must not reach the task
            with self._lock:
                self.failures += 1
                self._quiet_until = time.monotonic() + self.cooldown
            log.warning("result store %s: %s failed (%s: %s); the task goes on, writes paused "
                        "for %.0f s", self.store.url, what, type(exc).__name__, exc, self.cooldown)

    def _ours(self, message: dramatiq.Message) -> bool:
        return message.actor_name.startswith(self.prefix)

    # -- hooks ------------------------------------------------------------------------------
    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Recorded before the message is visible to workers, so its "queued" always lands
        before their "in_progress". A re-enqueue by Retries is the retrying -> queued step."""
        if not self._ours(message):
            return
        retries = message.options.get("retries", 0)
        deferred = message.options.get("etl_deferred")
        if deferred and not delay:
            return  # a deferred message moving from the delay queue: recorded when deferred
        if deferred:
            self._submit("deferred", lambda: self.store.update_status(
                message.message_id, JobStatus.RETRYING.value, note=f"deferred: {deferred}"))
            self._submit("requeue", lambda: self.store.update_status(
                message.message_id, JobStatus.QUEUED.value, queued_at=utcnow()))
            return
        if retries:
            last = (message.options.get("traceback") or "").strip().splitlines()[-1:] or [""]
            error_type, _, error = last[0].partition(": ")
            self._submit("retrying", lambda: self.store.update_status(
                message.message_id, JobStatus.RETRYING.value, note=last[0] or None,
                error=error or None, error_type=error_type or None, retry_count=retries))
            self._submit("requeue", lambda: self.store.update_status(
                message.message_id, JobStatus.QUEUED.value, queued_at=utcnow()))
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
        keep = self._ttl_of(broker, message)
        self._submit("store", lambda: self.store.store(job, ttl=keep))

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if not self._ours(message):
            return
        with self._lock:
            self._in_progress.add(message.message_id)
        _take_report()
        worker = f"{self.worker_id}:{threading.current_thread().name}"
        self._submit("start", lambda: self.store.update_status(
            message.message_id, JobStatus.IN_PROGRESS.value, worker_id=worker,
            retry_count=message.options.get("retries", 0)))

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if not self._ours(message):
            return
        with self._lock:
            self._in_progress.discard(message.message_id)
        reported, progress = _take_report()
        if exception is None and isinstance(reported, dict) and reported.get("deferred"):
            return  # re-enqueued by the actor (lease held elsewhere): before_enqueue recorded it
        if exception is None:
            self._submit("complete", lambda: self.store.update_status(
                message.message_id, JobStatus.COMPLETED.value, result=reported,
                progress=1.0 if progress is None else progress))
            return
        if not getattr(message, "failed", False):
            return  # Retries re-enqueues it: before_enqueue records retrying -> queued
        self._submit("failed", lambda: self.store.update_status(
            message.message_id, JobStatus.FAILED.value, note=f"{type(exception).__name__}: {exception}",
            error=str(exception), error_type=type(exception).__name__,
            retry_count=max(0, message.options.get("retries", 1) - 1)))  # last attempt counted

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if self._ours(message):
            with self._lock:
                self._in_progress.discard(message.message_id)
            self._submit("skip", lambda: self.store.update_status(
                message.message_id, JobStatus.ABORTED.value, note="skipped by middleware"))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            unfinished = list(self._in_progress)
        for job_id in unfinished:
            self._submit("shutdown", lambda job_id=job_id: self.store.update_status(
                job_id, JobStatus.RETRYING.value, note="worker shut down; the broker redelivers it"))

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.flush()
        if self.failures or self.dropped:
            log.warning("result store %s: %d write(s) failed, %d dropped; %d written",
                        self.store.url, self.failures, self.dropped, self.writes)
