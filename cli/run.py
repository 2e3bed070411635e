"""`etl run` and `etl describe`."""

from __future__ import annotations

import dataclasses
import os

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import err, object_store, out, result_store, settings, state_store, totals
from etl.context import RunContext
from etl.embedded import run_embedded
from etl.errors import ConfigError
from etl.pipeline import Pipeline, load_pipeline
from etl.runs import open_run
from etl.state import Checkpoint

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
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.pass_context
def run_command(ctx: click.Context, spec: str | None, shards: int | None, fresh: bool,
                run_id: str | None, batch_size: int | None, processes: int, threads: int,
                progress: bool) -> None:
    """Run fetch -> clean -> load over every shard; resumes an unfinished run."""
    if fresh and run_id:
        raise click.UsageError("--fresh and --run-id exclude each other")
    conf = settings()
    if not conf.broker_url.startswith("stub:"):
        raise ConfigError("distributed mode (a broker URL other than stub://) is not available "
                          "yet in this version; unset ETL_BROKER_URL to run embedded")
    chosen, pipeline = _pipeline(spec, shards, batch_size)
    state = state_store(conf)
    run, created = open_run(state, pipeline, spec=chosen, fresh=fresh, run_id=run_id)
    if created:
        err.print(f"new run [bold]{run.run_id}[/] ({run.plan}, state {state.url})")
    elif run.status == "completed":
        err.print(f"run [bold]{run.run_id}[/] is already complete over the same source data: "
                  "nothing to load (--fresh loads it again)")
    else:
        state.set_run_status(run.run_id, "running")
        err.print(f"resuming run [bold]{run.run_id}[/] ({run.plan}, state {state.url})")
    context = RunContext.build(run, pipeline, state, object_store(conf))
    before = totals(state.list_checkpoints(run.run_id))
    source_rows = run.params.get("source_rows")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, disable=not progress,
                  transient=False) as bar:
        rows_task = bar.add_task("rows loaded+quarantined", total=source_rows)
        shards_task = bar.add_task("shards done", total=run.shards)

        def on_progress(checkpoints: list[Checkpoint]) -> None:
            now = totals(checkpoints)
            bar.update(rows_task, completed=now["rows_loaded"] + now["rows_quarantined"])
            bar.update(shards_task, completed=now["shards_done"])

        result = run_embedded(context, processes=processes, threads=threads,
                              on_progress=on_progress, results=result_store(conf, required=False))
    after = totals(result.checkpoints)
    _summary(run.run_id, before, after, result.elapsed, result.completed)
    if not result.completed:
        for error in state.list_errors(run.run_id, limit=5):
            err.print(f"[red]failed[/] {error.stage} shard {error.shard} batch {error.batch}: "
                      f"{error.error_type}: {error.message}")
        err.print(f"run {run.run_id} is not complete; fix the cause and run the same command "
                  "again to resume (see `etl errors`)")
        ctx.exit(1)


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
        ("batches loaded", f"{after['batches_loaded']:,}"),
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
