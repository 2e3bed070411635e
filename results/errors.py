"""Errors of the result store."""

from __future__ import annotations

from etl.core.errors import EtlError


class JobNotFound(EtlError):
    """No record for this job id (never stored, deleted, or expired)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found (never stored, deleted, or expired)")


class ResultNotFound(EtlError):
    """The job exists but has no result yet within the wait, or finished without one."""


class InvalidTransition(EtlError):
    """A status change the lifecycle does not allow (e.g. completed -> in_progress)."""
