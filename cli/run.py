"""`etl run` and `etl describe`."""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import err, object_store, out, result_store, settings, state_store, totals
from etl.brokers import is_embedded
from etl.core.config import Settings
from etl.runtime.context import RunContext
from etl.runtime.distributed import Sender
from etl.drift import compare_kinds
from etl.runtime.embedded import run_embedded
from etl.pipeline import Pipeline, load_pipeline
from etl.runtime.runs import RunOutcome, open_run
from etl.stores.state import Checkpoint, RunRecord, StateStore
from etl.core.urls import mask_url
from etl.sources.windows import backfill_run_id

pipeline_option = click.option(
    "-p", "--pipeline", "spec", metavar="MODULE:ATTR",
    help="Pipeline to run (package.module:attribute). Default: the `pipeline` setting, "
         "else the built-in demo.")


def _pipeline(spec: str | None, shards: int | None,
              batch_size: int | None = None) -> tuple[str, Pipeline]:
    conf = settings()
    chosen = spec or conf.pipeline or "demo"
    pipeline = load_pipeline(chosen).with_shards(shards)
    if batch_size is not None:
        pipeline = dataclasses.replace(pipeline, batch_size=batch_size)
    return chosen, pipeline


@click.command("run")
@pipeline_option
@click.option("--shards", type=click.IntRange(min=1), help="Split the source into N shards.")
@click.option("--fresh", is_flag=True, help="Start a new run instead of resuming.")
@click.option("--run-id", help="Work on (or create) the run with this id.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Rows per batch for a new run (a resumed run keeps its own).")
@click.option("--processes", type=click.IntRange(min=1), default=min(os.cpu_count() or 1, 4),
              show_default="cores, at most 4",
              help="Local worker processes in embedded mode (each owns a share of the shards).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker threads per process in embedded mode.")
@click.option("--wait/--no-wait", default=False,
              help="Distributed mode: follow the run until it is done (default: print the "
                   "run id and return once its work is enqueued).")
@click.option("--accept-schema", is_flag=True,
              help="A new run takes the source's columns as they are now, instead of "
                   "expecting those of the pipeline's last completed run.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.pass_context
def run_command(ctx: click.Context, spec: str | None, shards: int | None, fresh: bool,
                run_id: str | None, batch_size: int | None, processes: int, threads: int,
                wait: bool, accept_schema: bool, progress: bool) -> None:
    """Run fetch -> clean -> load over every shard; resumes an unfinished run.

    With the embedded default broker (stub://) the work runs here, in local worker
    processes. With a RabbitMQ or Redis broker it is enqueued for `etl worker`s."""
    if fresh and run_id:
        raise click.UsageError("--fresh and --run-id exclude each other")
    chosen, pipeline = _pipeline(spec, shards, batch_size)
    execute(ctx, pipeline, spec=chosen, fresh=fresh, run_id=run_id, processes=processes,
            threads=threads, wait=wait, accept_schema=accept_schema, progress=progress)


@click.command("backfill")
@pipeline_option
@click.option("--start", required=True, help="Window start, included (ISO date/time or number).")
@click.option("--end", required=True, help="Window end, excluded.")
@click.option("--shards", type=click.IntRange(min=1), help="Split the window into N shards.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch for a new run.")
@click.option("--processes", type=click.IntRange(min=1), default=min(os.cpu_count() or 1, 4),
              show_default="cores, at most 4", help="Local worker processes in embedded mode.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker threads per process in embedded mode.")
@click.option("--wait/--no-wait", default=False, help="Distributed mode: follow the run.")
@click.option("--accept-schema", is_flag=True,
              help="A new run takes the source's columns as they are now, instead of "
                   "expecting those of the pipeline's last completed run.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.pass_context
def backfill_command(ctx: click.Context, spec: str | None, start: str, end: str,
                     shards: int | None, batch_size: int | None, processes: int, threads: int,
                     wait: bool, accept_schema: bool, progress: bool) -> None:
    """Load the rows with START <= window column < END, once, whoever triggers it.

    The run id derives from pipeline, shard plan and window: triggering the same window
    again resumes its run, or does nothing if it finished. Made for cron."""
    chosen, pipeline = _pipeline(spec, shards, batch_size)
    windowed = pipeline.for_window(start, end)
    window = windowed.source.window
    run_id = backfill_run_id(pipeline.name, pipeline.shards.describe(), window)
    execute(ctx, windowed, spec=chosen, run_id=run_id, params={"window": window.to_dict()},
            processes=processes, threads=threads, wait=wait, accept_schema=accept_schema,
            progress=progress)


def execute(ctx: click.Context, pipeline: Pipeline, *, spec: str, fresh: bool = False,
            run_id: str | None = None, params: dict[str, Any] | None = None,
            processes: int = 1, threads: int = 2, wait: bool = False,
            accept_schema: bool = False, progress: bool = True) -> None:
    """Open (or resume) the run and work it: here in embedded mode, on the broker otherwise."""
    conf = settings()
    distributed = not is_embedded(conf.broker_url)
    state = state_store(conf)
    run, created = open_run(state, pipeline, spec=spec, fresh=fresh, run_id=run_id, params=params,
                            accept_schema=accept_schema)
    finished = not created and run.status == "completed"
    if created:
        err.print(f"new run [bold]{run.run_id}[/] ({run.plan}, state {state.url})")
        _warn_schema_change(run, pipeline)
    elif finished:
        err.print(f"run [bold]{run.run_id}[/] is already complete over the same source data: "
                  "nothing to load (--fresh loads it again)")
        if distributed and not wait:
            out.print(run.run_id)
            return
    else:
        state.set_run_status(run.run_id, "running")
        err.print(f"resuming run [bold]{run.run_id}[/] ({run.plan}, state {state.url})")
    checkpoints = state.list_checkpoints(run.run_id)
    before = totals(checkpoints)
    if finished and distributed:  # a follower that arrives after the end gets the outcome
        outcome: RunOutcome | None = RunOutcome(True, 0.0, checkpoints)
    else:
        context = RunContext.build(run, pipeline, state, object_store(conf))
        with _progress(run, enabled=progress and (wait or not distributed)) as on_progress:
            outcome = (_on_broker(conf, context, created=created, wait=wait, on_progress=on_progress)
                       if distributed else
                       run_embedded(context, processes=processes, threads=threads,
                                    on_progress=on_progress,
                                    results=result_store(conf, required=False)))
    if outcome is None:  # enqueued, not followed
        out.print(run.run_id)
        return
    after = totals(outcome.checkpoints)
    after["drifted"] = _drifted(state, run.run_id)
    _summary(run.run_id, before, after, outcome.elapsed, outcome.completed)
    if not outcome.completed:
        for error in state.list_errors(run.run_id, limit=5):
            err.print(f"[red]failed[/] {error.stage} shard {error.shard} batch {error.batch}: "
                      f"{error.error_type}: {error.message}")
        hint = ("see `etl errors` and `etl dlq list`; after the fix, `etl dlq retry --run "
                f"{run.run_id}`" if distributed else "fix the cause and run the same command "
                "again to resume (see `etl errors`)")
        err.print(f"run {run.run_id} is not complete; {hint}")
        ctx.exit(1)


def _on_broker(conf: Settings, context: RunContext, *, created: bool, wait: bool,
               on_progress: Callable[[list[Checkpoint]], None]) -> RunOutcome | None:
    """Send the run's missing work to the broker; follow it to its end when `wait`."""
    sender = Sender(conf, results=result_store(conf, required=False))
    try:
        sent = sender.start(context, created=created)
        err.print(f"enqueued {len(sent.sent)} batch step(s) on {mask_url(conf.broker_url)} "
                  f"queue {sender.queue_of(context)}"
                  + ("" if created else f"; {len(sent.leased)} in progress, "
                                        f"{len(sent.waiting)} queued already"))
        return sender.wait(context, on_progress=on_progress) if wait else None
    finally:
        sender.close()


def _warn_schema_change(run: RunRecord, pipeline: Pipeline) -> None:
    """Say up front when the source's columns differ from those of the run it learned its
    schema from: every batch will be reported, and under `freeze` none will load."""
    learned, now = run.params.get("expected_schema"), run.params.get("source_schema")
    if not learned or not now:
        return
    drift = compare_kinds(now, learned)
    if drift:
        err.print(f"[yellow]schema changed[/] since run {run.params.get('schema_from')}: "
                  f"{drift.describe()}; policy {pipeline.schema_drift} (--accept-schema takes "
                  "the source as it is now)")


def _drifted(state: StateStore, run_id: str) -> int:
    """How many batches of the run were reported with schema drift."""
    return sum(1 for e in state.list_errors(run_id, limit=100_000) if e.stage == "schema")


@contextmanager
def _progress(run: RunRecord, *, enabled: bool) -> Iterator[Callable[[list[Checkpoint]], None]]:
    """A progress bar of rows and shards, fed with checkpoints."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, disable=not enabled,
                  transient=False) as bar:
        rows_task = bar.add_task("rows loaded+quarantined", total=run.params.get("source_rows"))
        shards_task = bar.add_task("shards done", total=run.shards)

        def on_progress(checkpoints: list[Checkpoint]) -> None:
            now = totals(checkpoints)
            bar.update(rows_task, completed=now["rows_loaded"] + now["rows_quarantined"])
            bar.update(shards_task, completed=now["shards_done"])

        yield on_progress


def _added(now: dict[str, int], completed: bool) -> int:
    """Rows a row-adding stage (Explode) made beyond those fetched, so that a finished run
    still adds up: rows in + rows added = rows loaded + rows quarantined."""
    if not completed:
        return 0
    return max(0, now["rows_cleaned"] + now["rows_quarantined"] - now["rows_fetched"])


def _summary(run_id: str, before: dict[str, int], after: dict[str, int], elapsed: float,
             completed: bool) -> None:
    loaded_now = after["rows_loaded"] - before["rows_loaded"]
    table = Table(title=f"run {run_id}: {'completed' if completed else 'NOT complete'}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in (
        ("shards done", f"{after['shards_done']}/{after['shards']}"),
        ("rows in (fetched)", f"{after['rows_fetched']:,}"),
        ("rows loaded", f"{after['rows_loaded']:,}"),
        ("rows quarantined", f"{after['rows_quarantined']:,}"),
        *([("rows added by stages", f"{added:,}")] if (added := _added(after, completed)) else []),
        ("batches loaded", f"{after['batches_loaded']:,}"),
        ("batches with schema drift", f"{after.get('drifted', 0):,}"),
        ("loaded by this invocation", f"{loaded_now:,}"),
        ("time", f"{elapsed:.2f} s"),
        ("rows/s", f"{loaded_now / elapsed:,.0f}" if elapsed > 0 else "-"),
    ):
        table.add_row(label, value)
    out.print(table)


@click.command("describe")
@pipeline_option
@click.option("--shards", type=click.IntRange(min=1), help="Show the plan with N shards.")
def describe_command(spec: str | None, shards: int | None) -> None:
    """Print a pipeline: source, shard plan, stages, sink."""
    _, pipeline = _pipeline(spec, shards)
    out.print(pipeline.describe(), markup=False)
