"""Changes to task records, and how a batch of them settles on the records it touches.

The recorder (results.middleware) does not write each lifecycle event as it happens: it
hands `NewRecord`s and `StatusChange`s to a writer thread (results.writer), which gives many
at a time to the store's `write_many`. The stores share the lifecycle arithmetic here:
`settle` groups a batch by job, applies each job's changes in order to the record read
from the store (or the one a `NewRecord` in the batch brings), with the same checks as
`update_status`, and says per change whether it applied or why it was refused. The store
then writes each job once: a transaction, pipeline or bulk write for the whole batch
instead of a read and a write per change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Sequence, Union

from etl.core.errors import EtlError
from results.errors import InvalidTransition, JobNotFound
from results.models import (TRANSITIONS, JobResult, JobStatus, Transition,
                            check_transition, stamp_fields, utcnow)

#: Statuses a job has before a worker starts it (see StatusChange.catch_up).
_BEFORE_START = frozenset({JobStatus.PENDING.value, JobStatus.QUEUED.value})

#: The note of an end written for a worker that did not write it (etl.runtime.run_record:
#: the run completed, so the step is done, but the worker died between its ack and its
#: write). If that worker was only slow, its late start is a no-op and its late end fills
#: in its fields (result, timing), not refused as a second end.
SETTLED_NOTE = "settled: the run completed; its worker did not record this end"


@dataclass
class NewRecord:
    """Write `job` whole (replacing any record of its id), living `ttl` (None: the default)."""

    job: JobResult
    ttl: timedelta | None = None

    @property
    def job_id(self) -> str:
        return self.job.job_id


@dataclass
class StatusChange:
    """Move a job to `status` as `update_status` does, stamped with the time it happened
    (`at`), not the time a writer got to it."""

    job_id: str
    status: str
    note: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)
    #: A worker's end of a message (completed, failed, ...) found still queued: its start
    #: was lost (written too late, or by a worker killed before its writer ran). Record
    #: the start it implies, then the end, rather than leave the record queued for ever.
    catch_up: bool = False


Change = Union[NewRecord, StatusChange]

#: Per change of a batch: None when it applied, else the lifecycle error that refused it.
Outcome = Union[EtlError, None]


def apply_change(job: JobResult, change: StatusChange) -> None:
    """Move `job` (in memory) as `change` says; InvalidTransition if its status forbids it."""
    check_transition(job.job_id, job.status, change.status)
    for name, value in {**change.fields, **stamp_fields(change.status, change.at,
                                                         job.started_at)}.items():
        setattr(job, name, value)
    job.status = change.status
    job.history.append(Transition(change.status, change.at, change.note))


@dataclass
class Settled:
    """What one job's changes in a batch came to.

    `final` is the record after the changes that applied (None: there is no record, so none
    could). With `created` set the batch brings a NewRecord for the job: write `final` whole,
    living `created.ttl`. Otherwise, when `steps` is not empty, move the stored record from
    `expected` (the status and history length it was read with: compare them, and set) to
    `final`: set `final`'s `fields` and append `steps` to its history (`fields` alone: a
    late worker's end filling in a settled record).
    """

    job_id: str
    final: JobResult | None
    expected: tuple[str, int] | None = None
    created: NewRecord | None = None
    steps: list[Transition] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)
    positions: list[int] = field(default_factory=list)  # of its changes in the batch

    @property
    def changed(self) -> bool:
        return self.created is not None or bool(self.steps) or bool(self.fields)


def to_read(changes: Iterable[Change]) -> list[str]:
    """The jobs whose stored record a batch needs: those whose first change is not a
    NewRecord (a NewRecord replaces whatever is stored)."""
    seen: dict[str, bool] = {}
    for change in changes:
        seen.setdefault(change.job_id, isinstance(change, StatusChange))
    return [job_id for job_id, read in seen.items() if read]


def settle(changes: Sequence[Change], stored: Mapping[str, JobResult]) -> tuple[
        list[Settled], list[Outcome]]:
    """Apply `changes` in order, per job, to the records in `stored` (by id, read for this
    batch and moved on in place; a missing id has no record). A change refused (no record:
    JobNotFound; a move its status forbids: InvalidTransition) leaves the record as it was
    and the job's next changes go on from there, as successive `update_status` calls do."""
    jobs: dict[str, Settled] = {}
    outcomes: list[Outcome] = [None] * len(changes)
    for position, change in enumerate(changes):
        settled = jobs.get(change.job_id)
        if settled is None:
            record = stored.get(change.job_id)
            settled = jobs[change.job_id] = Settled(
                change.job_id, record,
                (record.status, len(record.history)) if record is not None else None)
        settled.positions.append(position)
        if isinstance(change, NewRecord):
            job = change.job
            job.updated_at = job.updated_at or job.created_at
            if not job.history:
                job.history = [Transition(job.status, job.created_at)]
            settled.final, settled.created = job, change
            settled.steps, settled.fields = [], set()
            continue
        if settled.final is None:
            outcomes[position] = JobNotFound(change.job_id)
            continue
        if _settled_before(settled.final, change):
            # Its end was settled for it: the worker was only late. Its own start and end
            # bring what they know (worker, result, timing) without a second start or end.
            late: dict[str, Any] = {}
            if change.status == JobStatus.IN_PROGRESS.value:
                late = {**change.fields, "started_at": change.at}
            elif change.status == settled.final.status:
                late = {**change.fields, **stamp_fields(change.status, change.at,
                                                        settled.final.started_at)}
            if late:
                for name, value in late.items():
                    setattr(settled.final, name, value)
                settled.fields.update(late)
            continue
        try:
            if (change.catch_up and settled.final.status in _BEFORE_START
                    and JobStatus(change.status) not in TRANSITIONS[JobStatus(settled.final.status)]):
                apply_change(settled.final, StatusChange(
                    change.job_id, JobStatus.IN_PROGRESS.value, "start not recorded", {}, change.at))
                if settled.created is None:
                    settled.steps.append(settled.final.history[-1])
                    settled.fields.update(stamp_fields(JobStatus.IN_PROGRESS.value, change.at, None))
            apply_change(settled.final, change)
        except InvalidTransition as refused:
            outcomes[position] = refused
            continue
        if settled.created is None:
            settled.steps.append(settled.final.history[-1])
            settled.fields.update(change.fields)
            settled.fields.update(stamp_fields(change.status, change.at, None))
    return list(jobs.values()), outcomes


def _settled_before(job: JobResult, change: StatusChange) -> bool:
    """`job`'s end was written by a settle (SETTLED_NOTE) and `change` is its worker's own
    late start or end."""
    last = job.history[-1] if job.history else None
    return (last is not None and last.note == SETTLED_NOTE and job.finished
            and (change.catch_up or change.status == JobStatus.IN_PROGRESS.value))


def write_changes(store: Any, changes: Sequence[Change]) -> list[Outcome]:
    """Give `changes` to `store.write_many`, or, for a store without it, apply them one by
    one with `store` and `update_status`. Lifecycle refusals are returned per change; any
    other error (an outage) is raised."""
    many = getattr(store, "write_many", None)
    if many is not None:
        return many(changes)  # type: ignore[no-any-return]
    outcomes: list[Outcome] = []
    for change in changes:
        try:
            if isinstance(change, NewRecord):
                store.store(change.job, ttl=change.ttl)
            else:
                store.update_status(change.job_id, change.status, note=change.note,
                                    **dict(change.fields))
            outcomes.append(None)
        except EtlError as refused:
            outcomes.append(refused)
    return outcomes
