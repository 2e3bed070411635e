"""Python API in the spirit of arq: enqueue a task, hold its Job, ask it where it stands.

    client = ResultClient(open_results(url), broker=broker)
    job = client.enqueue_job("send_mail", "to@x", _job_id="mail-1", _defer_by=10)
    job.status()                      # "queued"
    job.result(timeout=30)            # waits (for the record too); ResultNotFound if not done
    job.abort(timeout=5)              # True once it ended aborted

The names are arq's where they fit. A job's record is written by the broker's
ResultRecorder (results.middleware); `enqueue_job` waits for its "queued" record, so a job
id seen once is known to the store at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import dramatiq

from etl.core.errors import ConfigError
from results.base import ResultStore
from results.errors import InvalidTransition, JobNotFound, ResultNotFound
from results.middleware import ABORTABLE, CLAIMED, ResultRecorder, queued_record, record_ttl
from results.models import JobResult, JobStatus

log = logging.getLogger(__name__)


class JobFailed(ResultNotFound):
    """The job finished without a result: failed, aborted, timed out or cancelled."""

    def __init__(self, job: JobResult) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} {job.status}: "
                         f"{job.error_type or ''}{': ' if job.error_type else ''}{job.error or ''}")


class Job:
    """A handle on one task's record."""

    def __init__(self, job_id: str, store: ResultStore) -> None:
        self.job_id = job_id
        self.store = store

    @property
    def id(self) -> str:
        """The job id (the Dramatiq message id), as arq's `Job.job_id`."""
        return self.job_id

    def __repr__(self) -> str:
        return f"Job({self.job_id!r})"

    def info(self) -> JobResult:
        """The whole record; JobNotFound if there is none."""
        job = self.store.get(self.job_id)
        if job is None:
            raise JobNotFound(self.job_id)
        return job

    def status(self) -> str:
        status = self.store.get_status(self.job_id)
        if status is None:
            raise JobNotFound(self.job_id)
        return status

    def result(self, timeout: float | None = None, *, poll_delay: float = 0.1,
               poll: float | None = None) -> Any:
        """Wait for the job to finish and return its result. ResultNotFound if it is not
        finished after `timeout` seconds (None: wait for ever), JobFailed if it finished
        without one, JobNotFound if no record of it appeared by then. A job just sent may
        have no record yet (the recorder writes it as the message is enqueued, from
        another thread or process): its absence is waited out like an unfinished job.
        `poll_delay`: seconds between reads (`poll` is its older name)."""
        delay = poll if poll is not None else poll_delay
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.get(self.job_id)
            if job is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobNotFound(self.job_id)
                time.sleep(delay)
                continue
            if job.status == JobStatus.COMPLETED.value:
                return job.result
            if job.finished:
                raise JobFailed(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultNotFound(f"job {self.job_id} is still {job.status} after {timeout} s")
            time.sleep(delay)

    def abort(self, *, timeout: float | None = None, poll_delay: float = 0.1) -> bool:
        """Abort the job: one still queued (or waiting for a retry) is recorded aborted
        and never runs (the worker reads its status before starting it); a running one is
        marked aborting and the worker interrupts its thread within a fraction of a second
        (the exception lands at its next Python instruction: a call blocked in C, such as
        a long socket read, ends first). Waits up to `timeout` seconds (None: do not wait)
        and says whether it ended aborted; False as well when it had already finished.
        Only jobs sent with `enqueue_job` are watched while they run."""
        deadline = time.monotonic() + (timeout or 0)
        while True:
            status = self.status()
            if status in (JobStatus.ABORTED.value, JobStatus.ABORTING.value):
                break
            if JobStatus(status) in (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RETRYING):
                target = JobStatus.ABORTED
            elif status == JobStatus.IN_PROGRESS.value:
                target = JobStatus.ABORTING
            else:
                return False  # finished already
            try:
                self.store.update_status(self.job_id, target.value, note="aborted by request")
                break
            except InvalidTransition:
                continue  # it moved meanwhile (e.g. started): ask again from where it is now
            except JobNotFound:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll_delay)  # the record is on its way
        while True:
            status = self.status()
            if status == JobStatus.ABORTED.value:
                return True
            if JobStatus(status) in {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT,
                                     JobStatus.CANCELLED}:
                return False
            if timeout is None or time.monotonic() >= deadline:
                return False
            time.sleep(poll_delay)

    async def result_async(self, timeout: float | None = None, *, poll_delay: float = 0.1) -> Any:
        """`result` for asyncio code: the same wait, each read in a thread, the polling an
        asyncio sleep, so the event loop goes on meanwhile."""
        return await asyncio.to_thread(self.result, timeout, poll_delay=poll_delay)

    async def status_async(self) -> str:
        return await asyncio.to_thread(self.status)

    async def abort_async(self, *, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.abort, timeout=timeout)

    def delete(self) -> bool:
        """Remove the job's record (the message, if still queued, is not touched: abort
        it first). True if there was one."""
        return self.store.delete(self.job_id)


def _millis(value: float | timedelta | None) -> int | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ConfigError(f"a delay or expiry must not be negative, got {value!r}")
    return int(seconds * 1000)


class ResultClient:
    """Look up jobs, and enqueue actors whose broker records results."""

    def __init__(self, store: ResultStore, *, broker: dramatiq.Broker | None = None) -> None:
        self.store = store
        self.broker = broker

    def job(self, job_id: str) -> Job:
        return Job(job_id, self.store)

    def get(self, job_id: str) -> JobResult:
        return self.job(job_id).info()

    def enqueue(self, actor: dramatiq.Actor, *args: Any, **kwargs: Any) -> Job:
        """Send `actor(*args, **kwargs)`; the broker's ResultRecorder records it. Options
        such as `_defer_by` belong to `enqueue_job`: here every keyword goes to the actor."""
        message = actor.send(*args, **kwargs)
        return Job(message.message_id, self.store)

    def _actor(self, actor_or_name: dramatiq.Actor | str) -> dramatiq.Actor:
        if isinstance(actor_or_name, dramatiq.Actor):
            return actor_or_name
        broker = self.broker or dramatiq.get_broker()
        try:
            return broker.get_actor(actor_or_name)
        except Exception:  # noqa: BLE001 - dramatiq's ActorNotFound
            raise ConfigError(f"no actor named {actor_or_name!r} on this broker") from None

    def enqueue_job(self, actor_or_name: dramatiq.Actor | str, *args: Any,
                    _job_id: str | None = None, _defer_by: float | timedelta | None = None,
                    _defer_until: datetime | None = None, _queue_name: str | None = None,
                    _expires: float | timedelta | None = None,
                    _results_ttl: float | None = None, **kwargs: Any) -> Job | None:
        """Send `actor_or_name(*args, **kwargs)` as arq's `enqueue_job` does, and return its
        Job; None when a job with `_job_id` already has a record that has not expired
        (arq's rule: one job per id). `_defer_by` (seconds or timedelta) or `_defer_until`
        (an aware datetime) delay it; `_queue_name` sends it to another queue (a worker
        must consume it); `_expires` (seconds or timedelta after it was due) skips it,
        recorded aborted, if it has not started by then; `_results_ttl` (seconds) is how
        long its record is kept. The job can be aborted (Job.abort). A `_job_id` is
        claimed atomically (ResultStore.claim): the job's "queued" record is written before
        it is sent, only if no live record of that id exists, so of senders racing with
        one id exactly one sends; if the send fails, the record is deleted again."""
        actor = self._actor(actor_or_name)
        if _defer_by is not None and _defer_until is not None:
            raise ConfigError("give _defer_by or _defer_until, not both")
        delay = _millis(_defer_by)
        if _defer_until is not None:
            if _defer_until.tzinfo is None:
                raise ConfigError("_defer_until must be an aware datetime (with a time zone)")
            delay = max(0, int((_defer_until - datetime.now(timezone.utc)).total_seconds() * 1000))
        options: dict[str, Any] = {ABORTABLE: True}
        if _expires is not None:
            options["max_age"] = (delay or 0) + max(1, _millis(_expires) or 0)
        if _results_ttl is not None:
            options["results_ttl"] = float(_results_ttl)
        if _job_id is not None:
            options[CLAIMED] = True  # its record is written here: the recorder writes none
        message = actor.message_with_options(args=args, kwargs=kwargs, **options)
        changes: dict[str, Any] = {}
        if _job_id is not None:
            changes["message_id"] = _job_id
        if _queue_name is not None:
            changes["queue_name"] = _queue_name
            actor.broker.declare_queue(_queue_name)
        if changes:
            message = message.copy(**changes)
        broker = actor.broker
        recorders = [m for m in broker.middleware if isinstance(m, ResultRecorder)]
        if _job_id is not None and not self.store.claim(
                queued_record(message),
                ttl=record_ttl(broker, message, recorders[0].ttl if recorders else None)):
            return None  # a job with this id has a live record
        try:
            message = broker.enqueue(message, delay=delay or None)
        except BaseException:
            if _job_id is not None:
                self._unclaim(_job_id)
            raise
        for recorder in recorders:
            recorder.flush(timeout=5.0)  # its "queued" record is there on return
        return Job(message.message_id, self.store)

    def _unclaim(self, job_id: str) -> None:
        """Drop the record claimed for a job whose send failed, so the id is free again."""
        try:
            self.store.delete(job_id)
        except Exception as exc:  # noqa: BLE001 - an outage: the send's error is what to raise
            log.warning("result store %s: cannot delete the record of job %s, whose send "
                        "failed (%s); the id stays taken until it expires",
                        self.store.url, job_id, type(exc).__name__)

    async def enqueue_job_async(self, actor_or_name: dramatiq.Actor | str, *args: Any,
                                **options: Any) -> Job | None:
        """`enqueue_job` for asyncio code (the send and the wait for its record in a thread)."""
        return await asyncio.to_thread(self.enqueue_job, actor_or_name, *args, **options)


__all__ = ["Job", "JobFailed", "ResultClient"]
