"""Read-only commands: `etl status`, `etl runs`, `etl checkpoints`, `etl errors`, `etl config`.

Each `--json` prints one JSON document: an object for one thing (`etl status`), an array
for a list."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import out, settings, shard_status, state_store, to_json, totals
from etl.core.config import ENV_NAMES
from etl.core.errors import ConfigError
from etl.core.logs import without_where
from etl.core.shared_settings import SHARED_WITH_WORKERS
from etl.core.urls import mask_url
from etl.inspect.history import run_lines, took_text
from etl.inspect.tables import shown_error
from etl.stores.state import RunRecord, StateStore


@click.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run_id: str | None, as_json: bool) -> None:
    """Per-shard progress of RUN (default: the newest run)."""
    state = state_store(settings())
    run = _run_or_newest(state, run_id)
    checkpoints = state.list_checkpoints(run.run_id)
    if as_json:
        out.print_json(to_json({"run": run, "totals": totals(checkpoints),
                                "shards": checkpoints}))
        return
    table = Table(title=f"run {run.run_id} ({run.pipeline}, {run.plan}): {run.status}")
    for column in ("shard", "status", "batches f/c/l", "rows fetched", "loaded", "quarantined",
                   "cursor"):
        table.add_column(column, justify="left" if column == "status" else "right")
    table.add_column("last error (of a shard not done)", overflow="fold", ratio=1)
    for c in checkpoints:
        table.add_row(str(c.shard), shard_status(c),
                      f"{c.batches_fetched}/{c.batches_cleaned}/{c.batches_loaded}",
                      f"{c.rows_fetched:,}", f"{c.rows_loaded:,}", f"{c.rows_quarantined:,}",
                      str(c.cursor), shown_error(c) or "")
    t = totals(checkpoints)
    table.caption = (f"{t['shards_done']}/{t['shards']} shards done, {t['rows_loaded']:,} rows "
                     f"loaded, {t['rows_quarantined']:,} quarantined")
    out.print(table)


@click.command("runs")
@click.option("--pipeline", help="Only runs of this pipeline (its name).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON array, newest first.")
def runs_command(pipeline: str | None, limit: int, as_json: bool) -> None:
    """Runs, newest first: id, pipeline, status, rows, started, took."""
    state = state_store(settings())
    lines = run_lines(state, pipeline=pipeline, limit=limit)
    if as_json:
        out.print_json(to_json(lines))
        return
    if not lines:
        out.print(f"no runs in {mask_url(state.url)}; start one with `etl run`", markup=False)
        return
    table = Table(title=f"runs, newest first ({len(lines)} shown)")
    for column in ("run", "pipeline", "status", "rows loaded", "quarantined", "started (UTC)",
                   "took"):
        table.add_column(column, justify="right" if column in ("rows loaded", "quarantined",
                                                               "took") else "left",
                         no_wrap=column == "run")
    for line in lines:
        table.add_row(line.run_id, line.pipeline, line.status, f"{line.rows_loaded:,}",
                      f"{line.rows_quarantined:,}", f"{line.started:%Y-%m-%d %H:%M:%S}",
                      took_text(line.took_seconds))
    out.print(table)


@click.command("checkpoints")
@click.option("--run", "run_id", help="This run (default: the newest run).")
@click.option("--all", "every_run", is_flag=True, help="Every run, newest first.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON array of checkpoints.")
def checkpoints_command(run_id: str | None, every_run: bool, as_json: bool) -> None:
    """TaskCheckpoint rows of the newest run (--run RUN, --all)."""
    if run_id and every_run:
        raise click.UsageError("give --run or --all, not both")
    state = state_store(settings())
    if every_run:
        newest_first = {r.run_id: i for i, r in enumerate(state.list_runs(limit=1_000_000))}
        checkpoints = sorted(state.list_checkpoints(None),
                             key=lambda c: (newest_first.get(c.run_id, len(newest_first)), c.shard))
        title = "TaskCheckpoint of every run, newest first"
    else:
        run = _run_or_newest(state, run_id)
        checkpoints = state.list_checkpoints(run.run_id)
        title = f"TaskCheckpoint of run {run.run_id} ({run.status})"
    if as_json:
        out.print_json(to_json(checkpoints))
        return
    table = Table(title=title)
    for column in ("run", "shard", "status", "cursor", "fetched", "cleaned", "loaded",
                   "quarantined", "updated"):
        table.add_column(column, no_wrap=column == "run")
    for c in checkpoints:
        table.add_row(c.run_id, str(c.shard), shard_status(c), str(c.cursor),
                      f"{c.rows_fetched:,}", f"{c.rows_cleaned:,}", f"{c.rows_loaded:,}",
                      f"{c.rows_quarantined:,}", c.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


def _run_or_newest(state: StateStore, run_id: str | None) -> RunRecord:
    """The run `run_id`, or the newest run; ConfigError naming the store if there is none."""
    if run_id is None:
        runs = state.list_runs(limit=1)
        if not runs:
            raise ConfigError(f"no runs in {state.url}; start one with `etl run`")
        return runs[0]
    found = state.get_run(run_id)
    if found is None:
        raise ConfigError(f"run {run_id!r} not found in {state.url}")
    return found


@click.command("errors")
@click.option("--run", "run_id", help="Only this run.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--traceback", "show_traceback", is_flag=True, help="Print tracebacks too.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (tracebacks included).")
def errors_command(run_id: str | None, limit: int, show_traceback: bool, as_json: bool) -> None:
    """List TaskErrorLog entries, newest first."""
    errors = state_store(settings()).list_errors(run_id, limit=limit)
    if as_json:
        out.print_json(to_json(errors))  # tracebacks included
        return
    if not errors:
        out.print("no errors recorded")
    for e in errors:
        # the line says where: the message's own run/shard/batch prefix is left out
        out.print(f"{e.at:%Y-%m-%d %H:%M:%S} {e.run_id} {e.stage} shard {e.shard} batch "
                  f"{e.batch}: {e.error_type}: {without_where(mask_url(e.message))}",
                  markup=False)
        if show_traceback:
            out.print(mask_url(e.traceback), markup=False)


#: Settings that are secrets as a whole: shown as *** when set, never their value.
SECRET_SETTINGS = frozenset({"api_token"})


def _shown(name: str, value: object) -> object:
    """A setting's value as `etl config` shows it: secrets hidden, passwords in URLs masked."""
    if name in SECRET_SETTINGS:
        return "***" if value else value
    return mask_url(value)


@click.command("config")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON array of settings.")
def config_command(as_json: bool) -> None:
    """Show the settings in force (passwords masked) and where each came from."""
    conf = settings()
    rows = [{"setting": name, "value": _shown(name, getattr(conf, name)), "from": conf.sources[name],
             "environment_variable": env_name,
             "workers_must_share": SHARED_WITH_WORKERS.get(name)}
            for name, env_name in ENV_NAMES.items()]
    if as_json:
        out.print_json(to_json(rows))
        return
    table = Table(title="settings")
    for column in ("setting", "value", "from", "environment variable", "workers must share"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["setting"], row["value"] or "-", row["from"], row["environment_variable"],
                      row["workers_must_share"] or "")
    table.caption = ("`etl worker` reads its settings where it runs, not from the `etl run` "
                     "that sent the work: give workers the same values for the settings in "
                     "the last column (environment, etl.toml or setup.cfg).")
    out.print(table)
