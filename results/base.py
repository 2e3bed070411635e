"""The ResultStore interface and the serialisation shared by its backends."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence, runtime_checkable

from results.models import JobResult, Transition

if TYPE_CHECKING:
    from results.changes import Change, Outcome


@runtime_checkable
class ResultStore(Protocol):
    """Where task records live. Every record has a time to live. A store keeps no secret:
    URL passwords and secret query values in args, result, error and notes are masked
    before they are written (results.models.mask_job, etl.core.urls.mask_url)."""

    url: str  # masked

    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        """Write the whole record (replacing any), expiring `ttl` from now (default a day)."""

    def claim(self, job: JobResult, *, ttl: timedelta | None = None) -> bool:
        """Write `job` as `store` does, but only if no live record of its id exists (an
        expired one counts as absent and is replaced); True if it was written. Atomic: of
        senders racing to claim one id, exactly one wins (enqueue_job's one job per id)."""

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        """Move the job to `status` if the lifecycle allows it from its current status,
        set `fields` and the status's timestamps, append to history. Raises JobNotFound or
        InvalidTransition."""

    def write_many(self, changes: "Sequence[Change]") -> "list[Outcome]":
        """Apply a batch of new records (as `store`) and status changes (as `update_status`,
        stamped with their own time), in order per job, in as few round trips as the
        backend allows. Per change: None when applied, else the JobNotFound or
        InvalidTransition that refused it (the job's later changes go on from there).
        Any other error (an outage) is raised; part of the batch may then be written.
        Optional: results.changes.write_changes falls back to store/update_status."""

    def get(self, job_id: str) -> JobResult | None: ...

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        """The records found, by id, in one round trip; missing ids are simply absent."""

    def get_status(self, job_id: str) -> str | None: ...

    def history(self, job_id: str) -> list[Transition]:
        """Transitions oldest first; JobNotFound if there is no such job."""

    def delete(self, job_id: str) -> bool: ...

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        """Newest first."""

    def cleanup_expired(self) -> int:
        """Remove what has expired (records, or index entries of expired records); count."""

    def stats(self) -> dict[str, Any]:
        """{"store": kind, "total": n, "by_status": {...}, "by_queue": {...},
        "success_rate": completed/finished or None, "avg_duration": s or None}."""

    def close(self) -> None: ...


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.astimezone(timezone.utc).isoformat()}
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _hook(value: dict[str, Any]) -> Any:
    if set(value) == {"$dt"}:
        return datetime.fromisoformat(value["$dt"])
    return value


_ENCODE = json.JSONEncoder(default=_default, separators=(",", ":")).encode


def dumps(value: Any) -> str:
    """JSON that keeps datetimes (as tagged ISO strings) and tolerates any result value."""
    if value is None:
        return "null"
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    if isinstance(value, str) and value.isalnum():
        return f'"{value}"'
    return _ENCODE(value)


_DECODE = json.JSONDecoder(object_hook=_hook).decode  # made once: json.loads with a hook
                                                     # built a decoder per call (~5 us)


def loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    if type(text) is bytes:
        if text.isdigit():
            return int(text)
        text = text.decode()
    return _DECODE(text)


def job_history(store: ResultStore, job_id: str) -> list[Transition]:
    """A job's transitions oldest first, read through `store.get`; JobNotFound if none."""
    from results.errors import JobNotFound

    job = store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job.history


def summarise(jobs: Iterable[tuple[str, str, float | None]], *, store: str) -> dict[str, Any]:
    """Stats from (status, queue, duration) triples of the live records of a `store` (its
    kind: sqlite, redis, mongodb, postgresql, mysql). `success_rate` is completed over
    finished records (None while none has finished)."""
    from results.models import FINISHED, JobStatus

    by_status: dict[str, int] = {}
    by_queue: dict[str, int] = {}
    durations: list[float] = []
    total = 0
    for status, queue, duration in jobs:
        total += 1
        by_status[status] = by_status.get(status, 0) + 1
        by_queue[queue] = by_queue.get(queue, 0) + 1
        if duration is not None:
            durations.append(duration)
    finished = sum(n for s, n in by_status.items() if JobStatus(s) in FINISHED)
    completed = by_status.get(JobStatus.COMPLETED.value, 0)
    return {"store": store, "total": total, "by_status": by_status, "by_queue": by_queue,
            "success_rate": completed / finished if finished else None,
            "avg_duration": sum(durations) / len(durations) if durations else None}
