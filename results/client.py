"""Python API in the spirit of arq: enqueue a task, hold its Job, ask it where it stands.

    client = ResultClient(open_results(url))
    job = client.job(job_id)          # or client.enqueue(actor, *args)
    job.status()                      # "in_progress"
    job.result(timeout=30)            # waits; ResultNotFound if not done in time
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq

from results.base import ResultStore
from results.errors import JobNotFound, ResultNotFound
from results.models import JobResult, JobStatus


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

    def result(self, *, timeout: float | None = None, poll: float = 0.1) -> Any:
        """Wait for the job to finish and return its result. ResultNotFound if it is not
        finished after `timeout` seconds (None: wait for ever), JobFailed if it finished
        without one, JobNotFound if no record of it appeared by then. A job just sent may
        have no record yet (the recorder writes it as the message is enqueued, from
        another thread or process): its absence is waited out like an unfinished job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.get(self.job_id)
            if job is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobNotFound(self.job_id)
                time.sleep(poll)
                continue
            if job.status == JobStatus.COMPLETED.value:
                return job.result
            if job.finished:
                raise JobFailed(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultNotFound(f"job {self.job_id} is still {job.status} after {timeout} s")
            time.sleep(poll)


class ResultClient:
    """Look up jobs, and enqueue actors whose broker records results."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def job(self, job_id: str) -> Job:
        return Job(job_id, self.store)

    def get(self, job_id: str) -> JobResult:
        return self.job(job_id).info()

    def enqueue(self, actor: dramatiq.Actor, *args: Any, **kwargs: Any) -> Job:
        """Send `actor(*args, **kwargs)`; the broker's ResultRecorder records it."""
        message = actor.send(*args, **kwargs)
        return Job(message.message_id, self.store)
