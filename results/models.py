"""The task result record and its status lifecycle.

    pending -> queued -> in_progress -> completed | failed | retrying | aborted | timeout
                                        | cancelled
    retrying -> queued                  (the retry is enqueued again)
    pending | queued -> cancelled | aborted
    in_progress -> aborting             (abort asked: the worker interrupts it, or it ends)
    aborting -> aborted | completed | failed | timeout | cancelled

Every transition is kept, with its time, in the record's history.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from etl.core.clock import utcnow  # noqa: F401 - re-exported: the recorders take it from here
from etl.core.urls import mask_secrets, mask_url


class JobStatus(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    ABORTED = "aborted"
    ABORTING = "aborting"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


S = JobStatus
#: Allowed next statuses for each status; the finished ones allow none.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED, S.ABORTED}),
    S.QUEUED: frozenset({S.IN_PROGRESS, S.CANCELLED, S.ABORTED}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED, S.RETRYING, S.ABORTED, S.TIMEOUT, S.CANCELLED,
                              S.ABORTING}),
    S.ABORTING: frozenset({S.ABORTED, S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED}),
    S.RETRYING: frozenset({S.QUEUED, S.IN_PROGRESS, S.FAILED, S.CANCELLED, S.ABORTED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.ABORTED: frozenset(),
    S.TIMEOUT: frozenset(),
    S.CANCELLED: frozenset(),
}
FINISHED = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

#: Default time to live of a record (a day): every record expires.
DEFAULT_TTL = timedelta(days=1)


@dataclass
class Transition:
    """One status change: to which status, when, and an optional note (error, reason)."""

    status: str
    at: datetime
    note: str | None = None


@dataclass
class JobResult:
    """Everything known about one task (a fetch/clean/load message, or a run)."""

    job_id: str
    function: str
    status: str = JobStatus.PENDING.value
    queue: str = "default"
    run_id: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    worker_id: str | None = None
    retry_count: int = 0
    max_retries: int | None = None
    progress: float = 0.0
    stage: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    queued_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration: float | None = None  # seconds from start to finish
    expires_at: datetime | None = None
    updated_at: datetime | None = None  # the last write: its creation or latest transition
    metadata: dict[str, Any] = field(default_factory=dict)  # the sender's own notes (enqueue_job)
    history: list[Transition] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return JobStatus(self.status) in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (history as dicts); shallow, so much cheaper than dataclasses.asdict."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["history"] = [t.__dict__.copy() for t in self.history]
        return data

    def to_compact(self) -> dict[str, Any]:
        """Only the fields that differ from their defaults, times as epoch seconds, no
        history: the smallest JSON for stores that pay per byte (Redis)."""
        data: dict[str, Any] = {}
        for name in _FIELDS:
            if name == "history":
                continue
            value = getattr(self, name)
            if name in _TIMES:
                if value is not None:
                    data[name] = round(value.timestamp(), 3)
            elif name in _REQUIRED or value != _DEFAULTS.get(name):
                data[name] = value
        return data

    @classmethod
    def from_compact(cls, data: dict[str, Any], history: list[Transition]) -> "JobResult":
        values = {k: (datetime.fromtimestamp(v, tz=timezone.utc) if k in _TIMES and v is not None else v)
                  for k, v in data.items() if k in _FIELDS
                  and not (v is None and _DEFAULTS.get(k) is not None)}  # a default kept as null
        return cls(**values, history=history)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobResult":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["history"] = [t if isinstance(t, Transition) else Transition(**t)
                             for t in values.get("history") or []]
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(JobResult))
_TIMES = frozenset({"created_at", "queued_at", "started_at", "completed_at", "expires_at",
                    "updated_at"})
_REQUIRED = frozenset({"job_id", "function", "status", "queue"})
_DEFAULTS: dict[str, Any] = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)  # type: ignore[misc]
    for f in dataclasses.fields(JobResult) if f.name not in _TIMES}


def mask_job(job: JobResult) -> JobResult:
    """`job` with URL passwords and secret query values masked (etl.core.urls) in what can
    carry text from outside: args, kwargs, result, error and history notes. In place (the
    stores own the record they write); returns it."""
    job.args, job.kwargs = mask_secrets(job.args), mask_secrets(job.kwargs)
    if job.result is not None:
        job.result = mask_secrets(job.result)
    if job.error:
        job.error = mask_url(job.error)
    if any(t.note for t in job.history):
        job.history = [Transition(t.status, t.at, mask_url(t.note)) if t.note else t
                       for t in job.history]
    return job


def ready_to_store(job: JobResult, ttl: timedelta | None, *,
                   now: datetime | None = None) -> JobResult:
    """`job` as a store writes a whole record (`store`, `claim`): expiring `ttl` (None: a
    day) from `now`, `updated_at` set if it was not, a first history step if it has none,
    secrets masked. In place (the stores own the record they write); returns it."""
    now = now or utcnow()
    job.expires_at = now + (ttl or DEFAULT_TTL)
    job.updated_at = job.updated_at or now
    if not job.history:
        job.history = [Transition(job.status, job.created_at)]
    return mask_job(job)


def mask_change(note: str | None, fields: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A status change's note and fields with secrets masked, as `mask_job` masks a record."""
    return (mask_url(note) if note else note), mask_secrets(fields)


def check_transition(job_id: str, current: str, target: str) -> None:
    """Raise InvalidTransition unless `current` may move to `target`."""
    from results.errors import InvalidTransition

    if JobStatus(target) not in TRANSITIONS[JobStatus(current)]:
        raise InvalidTransition(f"job {job_id}: cannot go from {current} to {target}")


def stamp_fields(status: str, now: datetime, started_at: datetime | None) -> dict[str, Any]:
    """Timestamps a transition to `status` sets: updated_at always, and queued_at,
    started_at, or completed_at and duration."""
    target = JobStatus(status)
    if target is JobStatus.QUEUED:
        return {"queued_at": now, "updated_at": now}
    if target is JobStatus.IN_PROGRESS:
        return {"started_at": now, "updated_at": now}
    if target in FINISHED:
        duration = (now - started_at).total_seconds() if started_at else None
        return {"completed_at": now, "duration": duration, "updated_at": now}
    return {"updated_at": now}
