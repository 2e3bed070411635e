"""A new distributed run created on a worker, where its source is parsed anyway.

Creating a run fits its shard plan on the source, counts the source's rows and learns its
schema: for a source held as one parsed table (etl.sources.base.WholeTable: a file) that is
a parse of the whole file. In distributed mode the workers parse it too, to cut batches
(`etl worker --preload` even before any work arrives), so a following sender (`etl run
--wait`) does not: it recognises an existing run from the source's fingerprint alone (a
hash of its bytes), and for a new one sends a single `plan_run` message carrying the run id
it chose. The worker that takes the message creates the run exactly as `open_run` would
have here; the sender waits for the run and its checkpoints to be recorded, then sends the
run's work as for any new run (the run's `planned_by` parameter names the worker process
that created it). A user error met while creating it (a bad shard column, a
file that does not parse) is logged against the run (TaskErrorLog, stage "plan") and
raised by the sender as the error it was; anything else is retried by Dramatiq.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from etl.core import errors
from etl.core.errors import USER_ERRORS, EtlError
from etl.core.processes import process_name
from etl.pipeline import Pipeline, load_pipeline
from etl.runtime.context import ContextCache
from etl.runtime.runs import existing_run, new_run_id, open_run
from etl.sources.base import WholeTable
from etl.stores.state import ErrorRecord, RunRecord, StateStore

log = logging.getLogger(__name__)

#: The planning actor's name on every broker (not an `etl_` batch step: the middleware
#: reading (run, shard, batch) from a step's arguments leaves it alone).
PLAN_ACTOR = "plan_run"
#: The stage name a failed plan is logged under (TaskErrorLog).
PLAN_STAGE = "plan"
#: Seconds a sender waits for a worker before saying it is waiting.
PATIENCE_NOTICE_S = 5.0


@dataclass(frozen=True)
class PlanRequest:
    """What a worker needs to create the run the sender would have created."""

    spec: str
    run_id: str
    shards: int
    batch_size: int | None = None
    accept_schema: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def pipeline(self) -> Pipeline:
        """The pipeline as the sender had it: its spec, split and batch size."""
        pipeline = load_pipeline(self.spec).with_shards(self.shards)
        if self.batch_size is not None and self.batch_size != pipeline.batch_size:
            pipeline = dataclasses.replace(pipeline, batch_size=self.batch_size)
        return pipeline


def plans_remotely(pipeline: Pipeline, spec: str, *, window: bool) -> bool:
    """Whether a new run of `pipeline` is better created by a worker: its source is parsed
    whole, and a worker can load the pipeline by its spec (no backfill window: those keep
    their own run ids and parameters)."""
    return isinstance(pipeline.source, WholeTable) and not window and not spec.startswith("(")


def declare_planner(broker: dramatiq.Broker, contexts: ContextCache, *,
                    queue: str) -> dramatiq.Actor:
    """Declare the planning actor on `queue` of `broker` (workers and senders alike)."""

    def plan(request: dict[str, Any]) -> None:
        wanted = PlanRequest(**request)
        state = contexts.stores()[0]
        try:
            run, created = open_run(state, wanted.pipeline(), spec=wanted.spec,
                                    run_id=wanted.run_id, accept_schema=wanted.accept_schema,
                                    params={**wanted.params,
                                            "planned_by": process_name(os.getpid())})
        except USER_ERRORS as exc:  # the sender says it: no retry makes it right
            state.log_error(ErrorRecord(run_id=wanted.run_id, stage=PLAN_STAGE,
                                        error_type=type(exc).__name__, message=str(exc)))
            log.warning("run %s not created: %s", wanted.run_id, exc)
            return
        log.info("%s run %s for its sender", "created" if created else "found", run.run_id)
        context = contexts.get(run.run_id)
        context.pipeline.source.prepare(context.plan)  # this worker's first fetch needs it

    return dramatiq.actor(plan, actor_name=PLAN_ACTOR, broker=broker, queue_name=queue,
                          priority=0, max_retries=3)


def plan_on_worker(planner: dramatiq.Actor, state: StateStore, pipeline: Pipeline, *,
                   spec: str, queue: str, fresh: bool, run_id: str | None,
                   params: dict[str, Any] | None, accept_schema: bool,
                   timeout: float | None = None) -> tuple[RunRecord, bool]:
    """`open_run`, with a new run created by a worker: (the run, whether it is new)."""
    found, changed, previous = existing_run(state, pipeline, fresh=fresh, run_id=run_id)
    if found is not None:
        return found, False
    run_id = run_id or new_run_id(pipeline.name)
    extra = dict(params or {})
    if changed and previous is not None:
        extra["definition_change"] = f"{changed} since run {previous.run_id}"
    request = PlanRequest(spec=spec, run_id=run_id, shards=pipeline.shards.shards,
                          batch_size=pipeline.batch_size, accept_schema=accept_schema,
                          params=extra)
    broker = planner.broker
    if queue not in broker.get_declared_queues():
        broker.declare_queue(queue)
    broker.enqueue(planner.message(dataclasses.asdict(request)).copy(queue_name=queue))
    return _wait_for_run(state, run_id, queue=queue, timeout=timeout), True


def _wait_for_run(state: StateStore, run_id: str, *, queue: str,
                  timeout: float | None) -> RunRecord:
    """The run once a worker has recorded it with every checkpoint; its plan's error if
    the worker could not create it."""
    started = time.monotonic()
    noticed, pause = False, 0.01
    while True:
        run = state.get_run(run_id)
        if run is not None and len(state.list_checkpoints(run_id)) >= run.shards:
            return run
        failed = [e for e in state.list_errors(run_id, limit=5) if e.stage == PLAN_STAGE]
        if failed:
            kind = getattr(errors, failed[0].error_type, None)
            kind = kind if isinstance(kind, type) and issubclass(kind, EtlError) else EtlError
            raise kind(failed[0].message)
        waited = time.monotonic() - started
        if timeout is not None and waited > timeout:
            raise EtlError(f"no worker created run {run_id} within {timeout:.0f} s: is an "
                           f"`etl worker` consuming queue {queue}?")
        if not noticed and waited > PATIENCE_NOTICE_S:
            noticed = True
            log.warning("waiting for a worker to create run %s (is an `etl worker` consuming "
                        "queue %s?)", run_id, queue)
        time.sleep(pause)
        pause = min(pause * 1.5, 0.2)


__all__ = ["PLAN_ACTOR", "PlanRequest", "declare_planner", "plan_on_worker", "plans_remotely"]
