"""`etl run` and `etl describe`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import click

from cli.common import err, out, settings, totals
from etl.core.logs import without_where
from etl.core.urls import mask_url
from etl.pipeline import Pipeline, load_pipeline
from etl.runner import Enqueued, RunOutcome, RunStart, run as etl_run
from etl.stores import Stores
from etl.stores.state import Checkpoint

if TYPE_CHECKING:
    from rich.progress import Progress

pipeline_option = click.option(
    "-p", "--pipeline", "spec", metavar="MODULE:ATTR",
    help="Pipeline to run (package.module:attribute, imported from the current directory "
         "as `python -m` does). Default: with --run-id of an existing run, that run's; else "
         "the `pipeline` setting, else the built-in demo.")


def _pipeline(spec: str | None, shards: int | None,
              batch_size: int | None = None) -> tuple[str, Pipeline]:
    conf = settings()
    chosen = spec or conf.pipeline or "demo"
    pipeline = load_pipeline(chosen).with_shards(shards)
    if batch_size is not None:
        pipeline = dataclasses.replace(pipeline, batch_size=batch_size)
    return chosen, pipeline


def _recorded(run_id: str) -> tuple[str | None, int | None]:
    """The pipeline spec and shard count an existing run was made with, so `etl run
    --run-id RUN` takes it up without repeating `-p` and `--shards` (None, None: no such
    run, or one made from Python, whose pipeline cannot be imported by name)."""
    from etl.stores import open_state

    state = open_state(settings().state_url)
    try:
        run = state.get_run(run_id)
    finally:
        state.close()
    if run is None:
        return None, None
    spec = run.params.get("pipeline_spec")
    if not spec or str(spec).startswith("(python)"):
        return None, run.shards
    return str(spec), run.shards


@click.command("run")
@pipeline_option
@click.option("--shards", type=click.IntRange(min=1), help="Split the source into N shards.")
@click.option("--fresh", is_flag=True, help="Start a new run instead of resuming.")
@click.option("--run-id", help="Work on (or create) the run with this id.")
@click.option("--resume", is_flag=True,
              help="Take up a cancelled run (`etl cancel`) again where it stopped; without "
                   "it, a cancelled run is refused (exit status 4).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Rows per batch for a new run (a resumed run keeps its own). Default: the "
                   "pipeline's, else a shard's rows and half again (10,000 to 250,000).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              show_default="cores, at most 4; 1 under 50,000 source rows",
              help="Local worker processes in embedded mode (each owns a share of the shards).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              show_default="1 per process with several processes, else 2",
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
                run_id: str | None, resume: bool, batch_size: int | None, processes: int | None,
                threads: int | None, wait: bool, accept_schema: bool, progress: bool) -> None:
    """Run fetch -> clean -> load over every shard; resumes an unfinished run.

    With the embedded default broker (stub://) the work runs here, in local worker
    processes. With a RabbitMQ or Redis broker it is enqueued for `etl worker`s."""
    if fresh and run_id:
        raise click.UsageError("--fresh and --run-id exclude each other")
    if run_id and (spec is None or shards is None):
        recorded_spec, recorded_shards = _recorded(run_id)
        spec, shards = spec or recorded_spec, shards or recorded_shards
    chosen, pipeline = _pipeline(spec, shards, batch_size)
    execute(ctx, pipeline, spec=chosen, fresh=fresh, run_id=run_id, processes=processes,
            threads=threads, wait=wait, accept_schema=accept_schema, progress=progress,
            resume=resume)


@click.command("backfill")
@pipeline_option
@click.option("--start", required=True, help="Window start, included (ISO date/time or number).")
@click.option("--end", required=True, help="Window end, excluded.")
@click.option("--shards", type=click.IntRange(min=1), help="Split the window into N shards.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch for a new run.")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              show_default="cores, at most 4; 1 under 50,000 source rows",
              help="Local worker processes in embedded mode.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              show_default="1 per process with several processes, else 2",
              help="Worker threads per process in embedded mode.")
@click.option("--wait/--no-wait", default=False, help="Distributed mode: follow the run.")
@click.option("--resume", is_flag=True,
              help="Take up the window's cancelled run again where it stopped.")
@click.option("--accept-schema", is_flag=True,
              help="A new run takes the source's columns as they are now, instead of "
                   "expecting those of the pipeline's last completed run.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.pass_context
def backfill_command(ctx: click.Context, spec: str | None, start: str, end: str,
                     shards: int | None, batch_size: int | None, processes: int | None,
                     threads: int | None, wait: bool, resume: bool, accept_schema: bool,
                     progress: bool) -> None:
    """Load the rows with START <= window column < END, once, whoever triggers it.

    The run id derives from pipeline, shard plan and window: triggering the same window
    again resumes its run, or does nothing if it finished. Made for cron."""
    chosen, pipeline = _pipeline(spec, shards, batch_size)
    execute(ctx, pipeline, spec=chosen, window=(start, end), processes=processes,
            threads=threads, wait=wait, accept_schema=accept_schema, progress=progress,
            resume=resume)


def execute(ctx: click.Context, pipeline: Pipeline, *, spec: str, fresh: bool = False,
            run_id: str | None = None, window: tuple[str, str] | None = None,
            processes: int | None = None, threads: int | None = None, wait: bool = False,
            accept_schema: bool = False, progress: bool = True, resume: bool = False) -> None:
    """Run through the runner (etl.runner) and print what it says: the opening line, the
    progress bar, the summary, and the failures of a run that did not complete. A cancelled
    run (refused without --resume, or cancelled while it works) is one line, exit 4."""
    from etl.runtime.cancel import EXIT_CANCELLED, RunCancelled

    conf = settings()
    bar = _ProgressBar(enabled=progress, wait=wait)
    try:
        with bar:
            outcome = etl_run(pipeline, spec=spec, fresh=fresh, run_id=run_id, window=window,
                              wait=wait, processes=processes, threads=threads,
                              accept_schema=accept_schema, settings=conf, resume=resume,
                              stores=Stores.from_settings(conf),
                              on_start=bar.start, on_enqueued=_enqueued, progress=bar.update)
    except RunCancelled as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        ctx.exit(EXIT_CANCELLED)
    if outcome.cancelled:
        err.print(f"run {outcome.run_id} cancelled: stopped with {outcome.rows_loaded:,} rows "
                  f"loaded; `etl run --run-id {outcome.run_id} --resume` takes it up again",
                  markup=False, highlight=False, soft_wrap=True)
        ctx.exit(EXIT_CANCELLED)
    if outcome.enqueued or (outcome.opened == "complete" and outcome.distributed and not wait):
        out.print(outcome.run_id)
        return
    _summary(outcome)
    if not outcome.completed:
        # Embedded work already said each failed batch in one WARNING line as it happened;
        # the workers of a distributed run said it in their own logs, so repeat it here.
        for error in outcome.errors if outcome.distributed else ():
            cause = without_where(f"{error.error_type}: {mask_url(error.message)}")
            err.print(f"[red]failed[/] {error.stage} shard {error.shard} batch {error.batch}: "
                      f"{' '.join(cause.split())}", soft_wrap=True, highlight=False)
        hint = ("see `etl errors` and `etl dlq list`; after the fix, `etl dlq retry --run "
                f"{outcome.run_id}`" if outcome.distributed else "fix the cause and run the "
                "same command again to resume (see `etl errors`)")
        err.print(f"run {outcome.run_id} is not complete; {hint}")
        ctx.exit(1)


def _enqueued(sent: Enqueued) -> None:
    err.print(f"enqueued {sent.sent} batch step(s) on {mask_url(sent.broker_url)} queue {sent.queue}"
              + (f"; {sent.leased} in progress, {sent.waiting} queued already"
                 if sent.leased or sent.waiting else ""))


class _ProgressBar:
    """A progress bar of rows and shards on stderr, made once the run is open (its totals
    come from the run) and fed with checkpoints; it also prints the opening line. A run
    that shows no bar (--no-progress, a distributed run not followed) does not make one,
    nor import rich.progress: the parent of an embedded run pays every import before its
    workers fork."""

    def __init__(self, *, enabled: bool, wait: bool) -> None:
        self.enabled, self.wait = enabled, wait
        self.bar: Progress | None = None
        self.rows_task = self.shards_task = None

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, start: RunStart) -> None:
        run = start.run
        if start.opened == "new":
            err.print(f"new run [bold]{run.run_id}[/] ({run.plan}, state {start.state_url})")
            if start.schema_change:
                err.print(f"[yellow]schema changed[/] {start.schema_change} (--accept-schema "
                          "takes the source as it is now)")
        elif start.opened == "complete":
            err.print(f"run [bold]{run.run_id}[/] is already complete over the same source "
                      "data: nothing to load (--fresh loads it again)")
            return
        else:
            err.print(f"resuming run [bold]{run.run_id}[/] ({run.plan}, state {start.state_url})")
        for notice in start.notices:
            err.print(f"[yellow]note[/] {notice}", markup=True, highlight=False, soft_wrap=True)
        if not (self.enabled and (self.wait or not start.distributed)):
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err, transient=False)
        self.rows_task = self.bar.add_task("rows loaded+quarantined",
                                           total=run.params.get("source_rows"))
        self.shards_task = self.bar.add_task("shards done", total=run.shards)
        self.bar.start()

    def update(self, checkpoints: list[Checkpoint]) -> None:
        if self.bar is None or self.rows_task is None:
            return
        now = totals(checkpoints)
        self.bar.update(self.rows_task, completed=now["rows_loaded"] + now["rows_quarantined"])
        self.bar.update(self.shards_task, completed=now["shards_done"])


def _summary(outcome: RunOutcome) -> None:
    from rich.table import Table  # here: its import (~16 ms) would delay the run's parse

    after = outcome.after
    title = f"run {outcome.run_id}: {'completed' if outcome.completed else 'NOT complete'}"
    table = Table(title=title, min_width=len(title))  # never breaks the run id mid-word
    table.add_column("measure")
    table.add_column("value", justify="right")
    rate = outcome.rows_per_second
    for label, value in (
        ("shards done", f"{after['shards_done']}/{after['shards']}"),
        ("rows in (fetched)", f"{after['rows_fetched']:,}"),
        ("rows loaded", f"{after['rows_loaded']:,}"),
        ("rows quarantined", f"{after['rows_quarantined']:,}"),
        *([("rows added by stages", f"{outcome.rows_added:,}")] if outcome.rows_added else []),
        ("batches loaded", f"{after['batches_loaded']:,}"),
        ("batches with schema drift", f"{outcome.drifted:,}"),
        *([("keys in more than one batch", f"{outcome.keys_repeated:,}")]
          if outcome.keys_repeated is not None else []),
        ("loaded by this invocation", f"{outcome.loaded_now:,}"),
        ("time", f"{outcome.elapsed:.2f} s"),
        ("rows/s", f"{rate:,.0f}" if rate is not None else "-"),
    ):
        table.add_row(label, value)
    out.print(table)


@click.command("describe")
@pipeline_option
@click.option("--shards", type=click.IntRange(min=1), help="Show the plan with N shards.")
@click.option("--check", is_flag=True,
              help="Also check the pipeline before a run: the source gives rows, each stage "
                   "finds its columns on a sample of them, the key is in the cleaned output, "
                   "the sink can be reached (exit status 2 when a check fails).")
@click.pass_context
def describe_command(ctx: click.Context, spec: str | None, shards: int | None,
                     check: bool) -> None:
    """Print a pipeline: source, shard plan, stages, sink."""
    _, pipeline = _pipeline(spec, shards)
    out.print(pipeline.describe(), markup=False)
    notice = pipeline.key_notice()
    if notice:
        out.print(f"note: {notice}", markup=False, highlight=False, soft_wrap=True)
    if check:
        _check(ctx, pipeline)


def _check(ctx: click.Context, pipeline: Pipeline) -> None:
    """Print each check of `pipeline` (etl.checks): passed and skipped ones on stdout, each
    failed one as one line on stderr; exit status 2 when one failed."""
    from etl.checks import check_pipeline

    checks = check_pipeline(pipeline)
    for found in checks:
        line = f"check {found.name}: {found.state} - {found.detail}"
        (err if found.failed else out).print(line, markup=False, highlight=False,
                                             soft_wrap=True)
    if any(found.failed for found in checks):
        ctx.exit(2)
