"""Dramatiq middleware recording every ETL message's lifecycle in the result store.

enqueue -> queued; worker picks it up -> in_progress; success -> completed (with what the
actor reported, e.g. rows, or that the dedup ledger made it a no-op), or cancelled when the
actor reported {"cancelled": reason} (acked without work); an error Dramatiq
retries -> retrying, then queued when Retries re-enqueues it; retries exhausted or a
permanent error -> failed (error type and message), or timeout when Dramatiq's TimeLimit
interrupted it; worker shutdown with the message unfinished -> retrying (the broker
redelivers it). A failure is recorded from the nack when this recorder's hook runs before
Retries has decided (it was added after Retries), so the middleware order does not matter.
Jobs sent by results.client.enqueue_job can be aborted: their status is read before they
start (aborted: skipped) and watched while they run (aborting: their thread interrupted).

Each transition leaves the task's thread for the recorder's writer thread (results.writer),
which writes them in batches, in order per job, at most about 50 ms after they happened
(and at once on flush). The one wait: a job's end is written before its message is acked
(a worker SIGKILLed between the two would leave it in_progress for ever); ETL steps skip
that wait, their run's completion settles them from the state store (see _before_ack). A store outage is logged,
counted and paused for `cooldown` seconds; a full queue drops writes (counted) rather than
block. Messages still unfinished once the worker's threads stopped are marked retrying (the
broker redelivers them), and the writer is flushed when the worker shuts down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage, TimeLimitExceeded
from dramatiq.middleware.threading import Interrupt, raise_thread_exception

from results.base import ResultStore
from results.changes import NewRecord, StatusChange
from results.models import JobResult, JobStatus, Transition, utcnow
from results.writer import BatchWriter

log = logging.getLogger(__name__)

#: Message option set by results.client.enqueue_job: the job may be aborted, so the worker
#: reads its status before it starts and watches it while it runs.
ABORTABLE = "etl_abortable"
#: Statuses that tell a worker to stop a job (results.client.Job.abort wrote them).
_STOP = frozenset({JobStatus.ABORTING.value, JobStatus.ABORTED.value})


#: The ends of a message a worker records (with the start they imply, if it was lost).
_ENDS = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT})

#: Message option set by results.client.enqueue_job on a message whose record it claimed
#: (wrote) itself before sending it: the recorder writes none (see before_enqueue).
CLAIMED = "etl_claimed"

#: Message option marking a message sent with a delay (see before_enqueue).
_DELAYED = "etl_delayed"

#: Message option an actor sets on its running message (CurrentMessage) to have its end
#: written before it is acked, whatever its actor (see ResultRecorder._before_ack).
RECORD_BEFORE_ACK = "etl_record_before_ack"


class JobAborted(Interrupt):
    """Raised in a worker thread whose job was aborted (results.client.Job.abort)."""


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


def queued_record(message: dramatiq.Message) -> JobResult:
    """The record of a message just enqueued: pending then queued now, its actor, queue,
    arguments and retry limit (an ETL step's run and stage too). What the recorder writes for
    a new message, and what enqueue_job claims for a job id of its sender's."""
    now = utcnow()
    args = list(message.args)
    etl = message.actor_name.startswith("etl_")
    return JobResult(
        job_id=message.message_id, function=message.actor_name, status=JobStatus.QUEUED.value,
        queue=message.queue_name, run_id=args[0] if etl and args else None,
        args=args, kwargs=dict(message.kwargs),
        stage=message.actor_name.removeprefix("etl_") if etl else None,
        max_retries=message.options.get("max_retries"), created_at=now, queued_at=now,
        history=[Transition(JobStatus.PENDING.value, now), Transition(JobStatus.QUEUED.value, now)])


def record_ttl(broker: dramatiq.Broker, message: dramatiq.Message,
               default: timedelta | None) -> timedelta | None:
    """How long the message's record lives: its own `results_ttl` option (seconds), its
    actor's, else `default` (the recorder's; None: the store's default)."""
    seconds = message.options.get("results_ttl")
    if seconds is None:
        try:
            seconds = broker.get_actor(message.actor_name).options.get("results_ttl")
        except Exception:  # noqa: BLE001 - an actor this broker does not know
            seconds = None
    return timedelta(seconds=float(seconds)) if seconds is not None else default


class ResultRecorder(Middleware):
    """Write each transition of messages whose actor name starts with `prefix` (all by
    default). ETL actors (etl_*) also get their run id and stage recorded. Records live
    `ttl` (default a day); a message option `results_ttl` (seconds) overrides it per job.
    Writes are batched every `interval` seconds (results.writer.BatchWriter)."""

    def __init__(self, store: ResultStore, *, prefix: str = "", cooldown: float = 5.0,
                 max_queue: int = 100_000, ttl: timedelta | None = None,
                 interval: float = 0.05, end_wait: float = 5.0) -> None:
        self.store = store
        self.end_wait = end_wait  # seconds an end written before its ack may hold the ack
        self.ttl = ttl
        self.prefix = prefix
        self.writer = BatchWriter(store, interval=interval, max_queue=max_queue, cooldown=cooldown)
        self._lock = threading.Lock()
        self._in_progress: set[str] = set()
        self._errors: dict[str, BaseException] = {}  # raised, left to Retries (after_nack)
        self._running: dict[str, tuple[int, dramatiq.Message]] = {}  # abortable: thread, message
        self._skipped: set[str] = set()  # aborted before they started
        self._watcher: threading.Thread | None = None
        self.abort_poll = 0.2  # seconds between reads of running abortable jobs' statuses
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

    def _move(self, what: str, job_id: str, status: JobStatus, note: str | None = None, *,
              urgent: bool = False, message: dramatiq.Message | None = None,
              **fields: Any) -> None:
        # A worker's end of a job also records the start it implies if that was lost
        # (results.changes.StatusChange.catch_up): no record stays queued after its ack.
        change = StatusChange(job_id, status.value, note, fields, catch_up=status in _ENDS)
        if message is not None and self._before_ack(message):
            if not self.writer.write_now(what, change, timeout=self.end_wait):
                log.warning("result store %s: the end of job %s not written within %.0f s; "
                            "acking it anyway", self.store.url, job_id, self.end_wait)
            return
        self.writer.submit(what, change, urgent=urgent)

    def _before_ack(self, message: dramatiq.Message) -> bool:
        """Whether a message's end is written before it is acked. A job's end has no other
        witness, so a worker killed between the ack and a batched write would leave its
        record in_progress for ever: jobs wait for it (one store round trip each). ETL
        steps do not: the state store witnesses them, and the run's completion settles
        their records (etl.runtime.run_record.settle_step_records); the step that
        completes a run asks for it (RECORD_BEFORE_ACK)."""
        return not message.actor_name.startswith("etl_") or bool(
            message.options.get(RECORD_BEFORE_ACK))

    def _ours(self, message: dramatiq.Message) -> bool:
        return message.actor_name.startswith(self.prefix)

    # -- hooks ------------------------------------------------------------------------------
    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """Submitted before the message is visible to workers, so in this process its
        "queued" is written before their "in_progress" (another process's writer waits for
        a record to appear: results.writer). A re-enqueue by Retries is retrying -> queued.
        A message enqueue_job claimed a job id for (CLAIMED) has its record already, written
        before it was sent: writing it again, a batch interval later, could overwrite what a
        fast worker of another process recorded meanwhile, or bring back a record its sender
        deleted when the send failed."""
        if not self._ours(message):
            return
        claimed = message.options.pop(CLAIMED, None)
        retries = message.options.get("retries", 0)
        deferred = message.options.get("etl_deferred")
        if not delay and message.options.pop(_DELAYED, None):
            return  # moving from the delay queue when due: recorded when it was delayed
        if deferred and not delay:
            return  # a deferred message moving from the delay queue: recorded when deferred
        if delay:
            message.options[_DELAYED] = 1  # sent with it, so its move when due is known
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
        if claimed:
            return  # its sender (results.client.enqueue_job) wrote this record already
        self.writer.submit("store", NewRecord(queued_record(message),
                                              record_ttl(broker, message, self.ttl)))

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if not self._ours(message):
            return
        if message.options.get(ABORTABLE):
            self._before_abortable(message)
        with self._lock:
            self._in_progress.add(message.message_id)
        _take_report()
        self._move("start", message.message_id, JobStatus.IN_PROGRESS,
                   worker_id=f"{self.worker_id}:{threading.current_thread().name}",
                   retry_count=message.options.get("retries", 0))

    def _before_abortable(self, message: dramatiq.Message) -> None:
        """A job sent by enqueue_job: skip it if it was aborted while queued (one read of
        its status), else watch it while it runs."""
        try:
            status = self.store.get_status(message.message_id)
        except Exception as exc:  # noqa: BLE001 - an outage: run it rather than lose it
            log.warning("result store %s: cannot read job %s's status (%s); running it",
                        self.store.url, message.message_id, type(exc).__name__)
            status = None
        if status in _STOP:
            with self._lock:
                self._skipped.add(message.message_id)
            if status == JobStatus.ABORTING.value:  # asked while a retry waited
                self._move("aborted", message.message_id, JobStatus.ABORTED, "aborted before it ran")
            raise SkipMessage(f"job {message.message_id} was aborted")
        with self._lock:
            self._running[message.message_id] = (threading.get_ident(), message)
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="etl-results-abort",
                                                 daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        """While abortable jobs run here, read their statuses every `abort_poll` seconds and
        interrupt the thread of any that Job.abort asked to stop (Dramatiq raises the
        exception in that thread at its next Python instruction, as TimeLimit does)."""
        while True:
            time.sleep(self.abort_poll)
            with self._lock:
                running = dict(self._running)
                if not running:
                    self._watcher = None
                    return
            try:
                jobs = self.store.get_many(running)
            except Exception:  # noqa: BLE001 - an outage: try again next time
                continue
            for job_id, job in jobs.items():
                if job.status not in _STOP:
                    continue
                with self._lock:  # held while raising: its thread cannot finish meanwhile
                    entry = self._running.pop(job_id, None)
                    if entry is None:
                        continue  # finished meanwhile
                    thread_id, message = entry
                    # Retries must fail it, not retry it: set only now, in this process's
                    # copy (a class is no JSON, and a failed message is not sent again).
                    message.options["throws"] = (JobAborted,)
                    log.info("aborting job %s", job_id)
                    raise_thread_exception(thread_id, JobAborted)

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if not self._ours(message):
            return
        with self._lock:
            self._in_progress.discard(message.message_id)
            if self._running:
                self._running.pop(message.message_id, None)
        reported, progress = _take_report()
        if exception is None and isinstance(reported, dict) and reported.get("deferred"):
            return  # re-enqueued by the actor (lease held elsewhere): before_enqueue recorded it
        if exception is None and isinstance(reported, dict) and reported.get("cancelled"):
            self._move("cancel", message.message_id, JobStatus.CANCELLED, reported["cancelled"],
                       message=message, result=reported)  # acked without work (its run was cancelled)
            return
        if exception is None:
            self._move("complete", message.message_id, JobStatus.COMPLETED, message=message,
                       result=reported, progress=1.0 if progress is None else progress)
            return
        if not getattr(message, "failed", False):
            # Retries re-enqueues it (before_enqueue records retrying -> queued), or, when
            # this recorder's hook runs before Retries' (added after it), Retries may fail
            # it yet: the nack says so (after_nack), whatever the middleware order.
            with self._lock:
                self._errors[message.message_id] = exception
            return
        self._failed(message, exception)

    def _failed(self, message: dramatiq.Message, exception: BaseException) -> None:
        """Record the end of a message that raised and will not be retried: aborted when
        it was stopped by Job.abort (which wrote that already if the job had not started),
        timeout when Dramatiq's TimeLimit interrupted it, else failed."""
        retry_count = max(0, message.options.get("retries", 1) - 1)  # last attempt counted
        if isinstance(exception, JobAborted):
            self._move("aborted", message.message_id, JobStatus.ABORTED, "aborted while running",
                       message=message, retry_count=retry_count)
            return
        status = JobStatus.TIMEOUT if isinstance(exception, TimeLimitExceeded) else JobStatus.FAILED
        text = str(exception) or ("time limit exceeded" if status is JobStatus.TIMEOUT else "")
        self._move(status.value, message.message_id, status, f"{type(exception).__name__}: {text}",
                   message=message, error=text, error_type=type(exception).__name__,
                   retry_count=retry_count)

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        """A failed message is rejected: record it failed if after_process_message left it
        to Retries (this recorder placed after Retries)."""
        with self._lock:
            exception = self._errors.pop(message.message_id, None)
        if exception is not None:
            self._failed(message, exception)

    def after_ack(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if self._errors:
            with self._lock:
                self._errors.pop(message.message_id, None)  # retried: before_enqueue recorded it

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if self._ours(message):
            with self._lock:
                self._in_progress.discard(message.message_id)
                self._running.pop(message.message_id, None)
                aborted = message.message_id in self._skipped
                self._skipped.discard(message.message_id)
            if aborted:
                return  # Job.abort recorded it aborted before it started
            self._move("skip", message.message_id, JobStatus.ABORTED, "skipped by middleware",
                       message=message)

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
