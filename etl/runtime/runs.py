"""Runs: create or resume one, find what is left to do, and close it when all is loaded.

A run is (pipeline, shard plan, run id). `etl run` resumes the newest unfinished run of the
same pipeline and plan unless told --fresh or --run-id. A new run fits the shard plan on the
source once and stores the fitted plan and the source's fingerprint, so every resume, on
any machine, splits and reads the source exactly the same way.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from etl.drift import source_schema
from etl.core.errors import ConfigError
from etl.core.faults import crash_point
from etl.pipeline import Pipeline, auto_batch_size
from etl.sinks.base import Sequenced, make_seq
from etl.sources.base import PlanChecked
from etl.core.names import task_fingerprint
from etl.core.statuses import RunStatus, ShardStatus
from etl.stores.state import Checkpoint, RunRecord, StateStore

if TYPE_CHECKING:
    from etl.runtime.context import RunContext
    from shards import ShardPlan

log = logging.getLogger(__name__)


def new_run_id(pipeline: str) -> str:
    """Sortable, unique: pipeline name, UTC time, random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{pipeline}-{stamp}-{secrets.token_hex(3)}"


def open_run(state: StateStore, pipeline: Pipeline, *, spec: str, fresh: bool = False,
             run_id: str | None = None, params: dict[str, Any] | None = None,
             accept_schema: bool = False) -> tuple[RunRecord, bool]:
    """The run to work on and whether it was created now.

    With `run_id`: that run (created under that name if new). With `fresh`: a new run.
    Otherwise the newest run of this pipeline and plan: resumed if unfinished, returned as
    it is (nothing to do) if completed over the same source data; a new run if there is
    none, or if the newest completed run read a source that has changed since. `params`
    are kept with a new run (a backfill's window, for one). A new run records its source's
    schema and, unless the pipeline declares one or `accept_schema`, expects the schema of
    the pipeline's newest completed run (etl.drift).
    """
    found, changed, previous = existing_run(state, pipeline, fresh=fresh, run_id=run_id)
    if found is not None:
        return found, False
    plan_name = pipeline.shards.describe()
    if isinstance(pipeline.source, PlanChecked):  # a source that cannot split this way
        pipeline.source.check_plan(pipeline.shards)  # says so before a run exists
    fitted = fit_plan(pipeline)
    run = RunRecord(
        run_id=run_id or new_run_id(pipeline.name), pipeline=pipeline.name, plan=plan_name,
        shards=fitted.shards,
        params={"pipeline_spec": spec, "plan": fitted.to_dict(),
                "batch_size": pipeline.batch_size or auto_batch_size(
                    pipeline.source.row_count(), fitted.shards),
                "source_fingerprint": pipeline.source.fingerprint(),
                "source_rows": pipeline.source.row_count(),
                "definition": pipeline.definition(),
                **({"definition_change": f"{changed} since run {previous.run_id}"}
                   if changed and previous is not None else {}),
                **_schemas(state, pipeline, accept=accept_schema), **(params or {})},
    )
    if not state.create_run(run):  # someone created it meanwhile: use theirs
        existing = state.get_run(run.run_id)
        assert existing is not None
        run = existing
    crash_point("run.after_create")
    state.init_checkpoints(run.run_id, run.shards)
    log.info("created run %s (%s, %d shards)", run.run_id, plan_name, run.shards)
    return run, True


def existing_run(state: StateStore, pipeline: Pipeline, *, fresh: bool = False,
                 run_id: str | None = None) -> tuple[RunRecord | None, str | None, RunRecord | None]:
    """What `open_run` decides before creating anything: (the run to take up, else None
    when a new run is due; what changed in the pipeline since the run it looked at; that
    run). Reads the source's fingerprint, never its rows."""
    plan_name = pipeline.shards.describe()
    run = _run_to_consider(state, pipeline, fresh=fresh, run_id=run_id)
    if run_id and run is not None and (run.pipeline != pipeline.name or run.plan != plan_name):
        raise ConfigError(f"run {run_id} belongs to pipeline {run.pipeline} with plan "
                          f"{run.plan}, not {pipeline.name} with {plan_name}")
    changed: str | None = None
    if run is not None:
        recorded = run.params.get("source_fingerprint")
        changed = definition_change(run, pipeline)
        if changed and run.status == RunStatus.COMPLETED and not run_id:
            log.info("pipeline changed since completed run %s (%s): starting a new run",
                     run.run_id, changed)
        elif recorded in (None, pipeline.source.fingerprint()):
            return _with_its_plan(state, run), None, run
        elif run.status != RunStatus.COMPLETED or run_id:
            raise ConfigError(f"the source changed since run {run.run_id} started "
                              f"({pipeline.source.describe()}); start a new run with --fresh")
        else:
            log.info("source changed since completed run %s: starting a new run", run.run_id)
    return None, changed, run


def _run_to_consider(state: StateStore, pipeline: Pipeline, *, fresh: bool,
                     run_id: str | None) -> RunRecord | None:
    """The run `existing_run` weighs taking up: the one named, else (unless `fresh`) the
    newest of this pipeline and plan, whatever its status."""
    if run_id:
        return state.get_run(run_id)
    if fresh:
        return None
    return state.latest_run(pipeline.name, pipeline.shards.describe(), unfinished=False)


def parse_needed(state: StateStore, pipeline: Pipeline, *, fresh: bool = False,
                 run_id: str | None = None) -> bool:
    """Whether opening a run of `pipeline` parses its source whatever its fingerprint says:
    a fresh run, a new run id, or a run to take up that is not completed. False when the
    run found may be complete over the same data (a cron job finding nothing new), where
    only the fingerprint is read, so that a parse begun ahead would be wasted."""
    run = _run_to_consider(state, pipeline, fresh=fresh, run_id=run_id)
    return run is None or run.status != RunStatus.COMPLETED


def definition_change(run: RunRecord, pipeline: Pipeline) -> str | None:
    """Which parts of the pipeline's definition (stages, sink, key, schema) differ from
    those `run` was created with; None when they agree or the run recorded none."""
    recorded = run.params.get("definition")
    if not isinstance(recorded, dict):
        return None
    now = pipeline.definition()
    parts = [name for name in now if name in recorded and recorded[name] != now[name]]
    return f"{', '.join(parts)} changed" if parts else None


def _with_its_plan(state: StateStore, run: RunRecord) -> RunRecord:
    """`run`, with a checkpoint for every shard of its plan. A run and its checkpoints are
    created in two writes (MongoDB has no transaction across them): a crash between the two
    leaves a run with no shards, which must resume, not pass for complete. The missing
    checkpoints are created here (idempotent), and a run that was taken for complete on
    them alone is running again."""
    recorded = {c.shard for c in state.list_checkpoints(run.run_id)}
    if len(recorded) >= run.shards:
        return run
    log.warning("run %s has %d of its %d shards recorded (a crash while it was created): "
                "restoring its plan", run.run_id, len(recorded), run.shards)
    state.init_checkpoints(run.run_id, run.shards)
    if run.status == RunStatus.COMPLETED:
        state.set_run_status(run.run_id, RunStatus.RUNNING)
        run = state.get_run(run.run_id) or run
    return run


def _schemas(state: StateStore, pipeline: Pipeline, *, accept: bool) -> dict[str, Any]:
    """The source's schema for a new run's record, and the expectation learned from the
    newest completed run that recorded one (unless the pipeline declares its own)."""
    schema = source_schema(pipeline.source)
    if schema is None:
        return {}
    found: dict[str, Any] = {"source_schema": schema}
    if pipeline.expected_schema or accept:
        return found
    for earlier in state.list_runs(pipeline=pipeline.name, limit=50):
        if earlier.status == RunStatus.COMPLETED and earlier.params.get("source_schema"):
            found["expected_schema"] = earlier.params["source_schema"]
            found["schema_from"] = earlier.run_id
            break
    return found


def fit_plan(pipeline: Pipeline) -> ShardPlan:
    """The pipeline's shard plan fitted on its source, as a new run records it (a worker's
    preload fits it the same way, so that a run finds its shards already grouped)."""
    return pipeline.shards.fit(pipeline.source.sample(plan_columns(pipeline)))


def plan_columns(pipeline: Pipeline) -> list[str]:
    """The source columns the pipeline's shard plan is fitted on."""
    plan = pipeline.shards
    columns = getattr(plan, "columns", None) or [getattr(plan, "column")]
    return [columns] if isinstance(columns, str) else list(columns)


ProgressCallback = Callable[[list[Checkpoint]], None]

#: The per-shard counters a run's totals add up.
COUNTERS = ("rows_fetched", "rows_cleaned", "rows_quarantined", "rows_loaded",
            "batches_fetched", "batches_cleaned", "batches_loaded")


def totals(checkpoints: list[Checkpoint]) -> dict[str, int]:
    """Sums over shards of every counter, plus shards done and failed."""
    result = {key: sum(getattr(c, key) for c in checkpoints) for key in COUNTERS}
    result["shards"] = len(checkpoints)
    result["shards_done"] = sum(c.complete for c in checkpoints)
    result["shards_failed"] = sum(c.status == ShardStatus.FAILED and not c.complete for c in checkpoints)
    return result


@dataclass
class WorkOutcome:
    """How working a run ended, here (embedded) or on a broker (distributed)."""

    completed: bool
    elapsed: float
    checkpoints: list[Checkpoint]
    dead_letters: int = 0
    resent: int = 0  # lost steps the reconciler sent again (distributed)
    cancelled: bool = False  # the run was cancelled while it worked (etl.runtime.cancel)
    #: Keys in more than one batch, per shard, counted by the process that loaded every batch
    #: of the shard (etl.runtime.loaded_keys); the key audit reads the other shards' files.
    key_counts: dict[int, int] = field(default_factory=dict)


@dataclass
class Pending:
    """What a run still needs: batch pipelines to start, by stage."""

    fetch: list[tuple[int, int]] = field(default_factory=list)  # (shard, next batch)
    clean: list[tuple[int, int]] = field(default_factory=list)  # fetched, not cleaned
    load: list[tuple[int, int]] = field(default_factory=list)  # cleaned, not loaded

    @property
    def total(self) -> int:
        return len(self.fetch) + len(self.clean) + len(self.load)


def find_pending(state: StateStore, run_id: str) -> Pending:
    """Compare checkpoints, payload pointers and the dedup ledger to find unfinished work."""
    pending = Pending()
    for checkpoint in state.list_checkpoints(run_id):
        if checkpoint.complete:
            continue
        if not checkpoint.fetch_done:
            pending.fetch.append((checkpoint.shard, checkpoint.batches_fetched))
        for batch in range(checkpoint.batches_fetched):
            if state.is_done(task_fingerprint("load", run_id, checkpoint.shard, batch)):
                continue
            if state.is_done(task_fingerprint("clean", run_id, checkpoint.shard, batch)):
                pending.load.append((checkpoint.shard, batch))
            else:
                pending.clean.append((checkpoint.shard, batch))
    return pending


def all_loaded(checkpoints: list[Checkpoint], shards: int) -> bool:
    """Every shard of a plan of `shards` is loaded. Checkpoints missing for some shards (or
    for all: `all([])` is true) mean the run is not complete, whatever the others say."""
    return len({c.shard for c in checkpoints}) >= shards and all(c.complete for c in checkpoints)


def run_complete(state: StateStore, run: RunRecord) -> bool:
    return all_loaded(state.list_checkpoints(run.run_id), run.shards)


def finish_sink(ctx: "RunContext") -> None:
    """Tell the sink the run is loaded; a key-honouring sink also learns the run's first
    sequence ("replace" drops the rows below it)."""
    sink = ctx.pipeline.sink
    if isinstance(sink, Sequenced):
        sink.finish_run(ctx.run_id, first_seq=make_seq(ctx.seq_stamp, 0, 0, 0))
    else:
        sink.finish_run(ctx.run_id)


def finalize_if_complete(ctx: "RunContext", *, shard: int | None = None) -> bool:
    """Mark the run completed and let the sink finish it, once every shard is loaded.

    Cheap to call after every load: it looks at the whole run only when `shard` is done.
    """
    state = ctx.state
    if shard is not None:
        checkpoint = state.get_checkpoint(ctx.run_id, shard)
        if checkpoint is None or not checkpoint.complete:
            return False
        if ctx.loaded_keys is not None:  # the shard is done: count its kept keys, free them
            ctx.loaded_keys.settle(ctx.run_id, checkpoint, list(ctx.pipeline.key))
    if not run_complete(state, ctx.run):
        return False
    finish_sink(ctx)
    run = state.get_run(ctx.run_id)
    if run is not None and run.status != RunStatus.COMPLETED:
        state.set_run_status(ctx.run_id, RunStatus.COMPLETED)
        log.info("run %s completed", ctx.run_id)
        _report_drift(ctx)
    return True


def _report_drift(ctx: "RunContext") -> None:
    """Schema drift, said once per run as it completes: how many batches drifted, and how
    (each drifted batch is in TaskErrorLog, stage "schema", and at INFO as it is cleaned)."""
    from etl.drift import drift_report

    drifted = [e.message for e in ctx.state.list_errors(ctx.run_id, limit=100_000)
               if e.stage == "schema"]
    if drifted:
        batches = sum(c.batches_fetched for c in ctx.state.list_checkpoints(ctx.run_id))
        log.warning("run %s: %s (`etl errors --run %s`)", ctx.run_id,
                    drift_report(drifted, batches=batches, policy=ctx.pipeline.schema_drift),
                    ctx.run_id)
