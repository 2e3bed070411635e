"""The run itself as a task in the result store: job id = run id, function "etl.run",
progress = rows settled (loaded or quarantined) / rows in the source, updated at most once a
second, then completed, failed or cancelled. Writes are guarded like the middleware's: a
result-store outage never stops a run."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Collection

from results.base import ResultStore
from results.models import JobResult, JobStatus, Transition, utcnow

if TYPE_CHECKING:
    from datetime import timedelta

    from etl.runtime.context import RunContext
    from etl.stores.state import Checkpoint, StateStore

log = logging.getLogger(__name__)


class RunTracker:
    """Keeps the run's record in the result store up to date."""

    def __init__(self, store: ResultStore, ctx: "RunContext", *, every: float = 1.0,
                 ttl: "timedelta | None" = None, resumed: bool = False) -> None:
        self.store, self.ctx, self.every, self.ttl = store, ctx, every, ttl
        self.resumed = resumed  # an earlier `etl run` of it may have been killed
        self.total = ctx.run.params.get("source_rows") or 0
        self._last = 0.0
        now = utcnow()
        self.job = JobResult(
            job_id=ctx.run_id, function="etl.run", status=JobStatus.IN_PROGRESS.value,
            queue="etl", run_id=ctx.run_id, args=[ctx.run.pipeline, ctx.run.plan],
            stage="run", created_at=now, queued_at=now, started_at=now,
            history=[Transition(JobStatus.PENDING.value, now), Transition(JobStatus.QUEUED.value, now),
                     Transition(JobStatus.IN_PROGRESS.value, now)])
        self._write(lambda: self.store.store(self.job, ttl=self.ttl))

    def _write(self, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the result store is never worth a failed run
            log.warning("result store %s: run record not written (%s: %s)", self.store.url,
                        type(exc).__name__, exc)

    def _progress(self, checkpoints: list["Checkpoint"]) -> float:
        settled = sum(c.rows_loaded + c.rows_quarantined for c in checkpoints)
        return min(1.0, settled / self.total) if self.total else 0.0

    def wrap(self, inner: Callable[[list["Checkpoint"]], None] | None) -> Callable[[list["Checkpoint"]], None]:
        def on_progress(checkpoints: list["Checkpoint"]) -> None:
            if inner:
                inner(checkpoints)
            if time.monotonic() - self._last >= self.every:
                self._last = time.monotonic()
                self.job.progress = self._progress(checkpoints)
                self._write(lambda: self.store.store(self.job, ttl=self.ttl))
        return on_progress

    def finish(self, completed: bool, checkpoints: list["Checkpoint"], *,
               cancelled: bool = False) -> None:
        loaded = sum(c.rows_loaded for c in checkpoints)
        quarantined = sum(c.rows_quarantined for c in checkpoints)
        if cancelled and not completed:
            from etl.runtime.cancel import close_run_record

            close_run_record(self.store, self.ctx.run_id)  # `etl cancel` may have closed it
            return
        if completed:
            settle_step_records(self.store, self.ctx.run_id)
            if self.resumed:
                record_lost_steps(self.store, self.ctx.state, self.ctx.run_id, ttl=self.ttl)
            self._write(lambda: self.store.update_status(
                self.ctx.run_id, JobStatus.COMPLETED.value, progress=1.0,
                result={"rows_loaded": loaded, "rows_quarantined": quarantined}))
        else:
            failed = sum(not c.complete for c in checkpoints)
            self._write(lambda: self.store.update_status(
                self.ctx.run_id, JobStatus.FAILED.value, progress=self._progress(checkpoints),
                error=f"{failed} shard(s) not complete", error_type="RunIncomplete"))


#: Statuses of a step's record that its run's completion settles (see settle_step_records).
_OPEN = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.IN_PROGRESS, JobStatus.RETRYING)


def settle_step_records(store: ResultStore, run_id: str, *, skip: Collection[str] = (),
                        limit: int = 100_000) -> int:
    """End `completed` every record of a completed run's steps still open: a worker killed
    between its message's ack and its batched write, or a message whose work a redelivery
    or the reconciler's re-send did. The run completed, so every step is done in the state
    store. `skip`: job ids to leave alone (the running step that completed the run records
    its own end). How many were settled; an outage is logged, never raised."""
    from results.changes import SETTLED_NOTE, StatusChange

    try:
        open_jobs = [job for status in _OPEN
                     for job in store.list(run_id=run_id, status=status.value, limit=limit)
                     if job.job_id != run_id and job.job_id not in skip]
        changes = []
        for job in open_jobs:
            if job.status != JobStatus.IN_PROGRESS.value:
                changes.append(StatusChange(job.job_id, JobStatus.IN_PROGRESS.value,
                                            "start not recorded"))
            changes.append(StatusChange(job.job_id, JobStatus.COMPLETED.value, SETTLED_NOTE))
        for start in range(0, len(changes), 1000):
            store.write_many(changes[start:start + 1000])
    except Exception as exc:  # noqa: BLE001 - the result store is never worth a failed run
        log.warning("result store %s: open records of run %s not settled (%s: %s)", store.url,
                    run_id, type(exc).__name__, exc)
        return 0
    if open_jobs:
        log.info("run %s: %d step record(s) left open by their workers settled completed",
                 run_id, len(open_jobs))
    return len(open_jobs)


#: The note of a record written for a step whose own record was lost (record_lost_steps).
LOST_NOTE = ("recorded at the run's completion: the state store counts this step done, and "
             "its own record was lost with its process (killed before its batched write)")


def record_lost_steps(store: ResultStore, state: "StateStore", run_id: str, *,
                      ttl: "timedelta | None" = None, queue: str | None = None,
                      limit: int = 10_000_000) -> int:
    """Write a `completed` record for each batch step of a completed run that the state
    store counts done but that has no record at all: its process was killed before the
    batched write holding even its "queued" (an embedded process writes every
    RECORD_INTERVAL_S, etl.runtime.embedded), and the resume that finished the run found
    the step done and did not run it again. For an embedded `etl run` that resumed its run,
    once every process of it has written what it holds. How many were written; an outage
    is logged, never raised. `queue`: the records' queue (default: the embedded one, where
    the steps ran)."""
    import uuid

    from etl.core.names import actor_name, task_fingerprint
    from etl.runtime.actors import QUEUE
    from results.changes import NewRecord

    queue = queue or QUEUE

    stages = ("fetch", "clean", "load")
    functions = {actor_name(stage): stage for stage in stages}
    try:
        recorded = {(functions[job.function], job.args[1], job.args[2])
                    for job in store.list(run_id=run_id, limit=limit)
                    if job.function in functions and len(job.args) >= 3}
        now = utcnow()

        def job_id(stage: str, shard: int, batch: int) -> str:  # the same on a second call
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"etl:{run_id}:{stage}:{shard}:{batch}"))

        lost = [NewRecord(JobResult(
                    job_id=job_id(stage, p.shard, p.batch), function=actor_name(stage),
                    status=JobStatus.COMPLETED.value, queue=queue, run_id=run_id,
                    args=[run_id, p.shard, p.batch], stage=stage, progress=1.0,
                    created_at=now, completed_at=now,
                    history=[Transition(JobStatus.COMPLETED.value, now, LOST_NOTE)]), ttl)
                for p in state.list_payloads(run_id) for stage in stages
                if (stage, p.shard, p.batch) not in recorded
                and state.is_done(task_fingerprint(stage, run_id, p.shard, p.batch))]
        for start in range(0, len(lost), 1000):
            store.write_many(lost[start:start + 1000])
    except Exception as exc:  # noqa: BLE001 - the result store is never worth a failed run
        log.warning("result store %s: lost step records of run %s not written (%s: %s)",
                    store.url, run_id, type(exc).__name__, exc)
        return 0
    if lost:
        log.info("run %s: %d step record(s) lost with a killed process written from the state "
                 "store", run_id, len(lost))
    return len(lost)
