"""`etl quarantine list RUN` and `etl quarantine replay RUN`."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from cli.common import err, object_store, out, settings, state_store, to_json
from etl.core.errors import ConfigError
from etl.inspect import Inspector
from etl.runner import replay
from etl.runtime.replay import NOT_REPLAYED


@click.group("quarantine")
def quarantine_group() -> None:
    """Rows the stages rejected: look at them, and re-drive them after a fix."""


@quarantine_group.command("list")
@click.argument("run_id")
@click.option("--shard", type=click.IntRange(min=0), help="Only this shard.")
@click.option("--stage", "stage", help="Only rows this stage rejected (e.g. cast, dedupe).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON array of the rows (at most --limit).")
def quarantine_list(run_id: str, shard: int | None, stage: str | None, limit: int,
                    as_json: bool) -> None:
    """Quarantined rows of RUN_ID with the stage and reason, and a count by reason."""
    conf = settings()
    inspector = Inspector(state_store(conf), object_store(conf))
    if inspector.state.get_run(run_id) is None:
        raise ConfigError(f"run {run_id!r} not found in {inspector.state.url}")
    rows = inspector.quarantine(run_id, shard=shard)
    if stage:
        rows = rows[rows["_stage"] == stage]
    if as_json:  # one document, as every --json: NaN and NA become null
        records = rows.head(limit).astype(object).where(rows.head(limit).notna(), None)
        out.print(to_json(records.to_dict(orient="records")), markup=False, soft_wrap=True)
        return
    counts = rows.groupby(["_stage", "_reason"], dropna=False).size().sort_values(ascending=False)
    title = f"quarantine of {run_id}: {len(rows):,} rows"
    summary = Table(title=title, min_width=len(title))
    for column in ("stage", "reason", "rows"):
        summary.add_column(column, justify="right" if column == "rows" else "left")
    for (name, reason), count in counts.head(20).items():
        summary.add_row(str(name), str(reason), f"{count:,}")
    out.print(summary)
    first = [c for c in ("shard", "batch", "_row", "_stage", "_reason") if c in rows.columns]
    rest = [c for c in rows.columns if c not in first]
    shown = rows.head(limit)[first + rest[:6]]  # the whole rows: --json
    table = Table(title=f"first {len(shown)} rows")
    for column in shown.columns:
        table.add_column(str(column), overflow="fold")
    for record in shown.itertuples(index=False):
        table.add_row(*["" if v is None else str(v) for v in record])
    out.print(table)


@quarantine_group.command("replay")
@click.argument("run_id")
@click.option("-p", "--pipeline", "spec", metavar="MODULE:ATTR",
              help="The fixed pipeline (default: the one the run used).")
@click.option("--stage", "stages", multiple=True,
              help=f"Replay only rows these stages rejected (default: all but {', '.join(NOT_REPLAYED)}).")
def quarantine_replay(run_id: str, spec: str | None, stages: tuple[str, ...]) -> None:
    """Clean RUN_ID's quarantined rows again with the (fixed) pipeline and load what passes,
    exactly once: a second replay only takes rows the first quarantined again."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err) as bar:
        task = bar.add_task("batches", total=None)
        # on_batch says how many batches were done as the next one starts: the last call is
        # 9 of 10, so the bar is filled when the replay returns
        result = replay(run_id, pipeline=spec, stages=stages or None, settings=settings(),
                        on_start=lambda run: err.print(
                            f"replaying the quarantine of {run.params['replay_of']} as "
                            f"[bold]{run.run_id}[/]"),
                        on_batch=lambda done, total: bar.update(task, completed=done, total=total))
        total = bar.tasks[0].total
        bar.update(task, completed=total or 0, total=total or 0)
    title = f"replay {result.run_id} (generation {result.generation}): completed"
    table = Table(title=title, min_width=len(title))  # a run id is never broken mid-word
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in (("rows replayed", result.rows_replayed),
                         ("rows loaded", result.rows_loaded),
                         ("rows quarantined again", result.rows_quarantined),
                         ("rows not replayed (stage filter, or row unknown)", result.rows_skipped),
                         ("batches done before", result.batches_done_before)):
        table.add_row(label, f"{value:,}")
    out.print(table)
