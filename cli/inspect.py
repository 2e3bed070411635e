"""Read-only commands: `etl status`, `etl checkpoints`, `etl errors`, `etl config`."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import out, settings, shard_status, state_store, to_json, totals
from etl.core.config import ENV_NAMES
from etl.core.errors import ConfigError
from etl.core.urls import mask_url


@click.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run_id: str | None, as_json: bool) -> None:
    """Per-shard progress of RUN (default: the newest run)."""
    state = state_store(settings())
    if run_id is None:
        runs = state.list_runs(limit=1)
        if not runs:
            raise ConfigError(f"no runs in {state.url}; start one with `etl run`")
        run = runs[0]
    else:
        found = state.get_run(run_id)
        if found is None:
            raise ConfigError(f"run {run_id!r} not found in {state.url}")
        run = found
    checkpoints = state.list_checkpoints(run.run_id)
    if as_json:
        out.print_json(to_json({"run": run, "totals": totals(checkpoints),
                                "shards": checkpoints}))
        return
    table = Table(title=f"run {run.run_id} ({run.pipeline}, {run.plan}): {run.status}")
    for column in ("shard", "status", "batches f/c/l", "rows fetched", "loaded", "quarantined",
                   "cursor", "last error"):
        table.add_column(column, justify="right" if column not in ("status", "last error") else "left")
    for c in checkpoints:
        table.add_row(str(c.shard), shard_status(c),
                      f"{c.batches_fetched}/{c.batches_cleaned}/{c.batches_loaded}",
                      f"{c.rows_fetched:,}", f"{c.rows_loaded:,}", f"{c.rows_quarantined:,}",
                      str(c.cursor), mask_url(c.last_error or "")[:60])
    t = totals(checkpoints)
    table.caption = (f"{t['shards_done']}/{t['shards']} shards done, {t['rows_loaded']:,} rows "
                     f"loaded, {t['rows_quarantined']:,} quarantined")
    out.print(table)


@click.command("checkpoints")
@click.option("--run", "run_id", help="Only this run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def checkpoints_command(run_id: str | None, as_json: bool) -> None:
    """List TaskCheckpoint rows."""
    checkpoints = state_store(settings()).list_checkpoints(run_id)
    if as_json:
        out.print_json(to_json(checkpoints))
        return
    table = Table(title="TaskCheckpoint")
    for column in ("run", "shard", "status", "cursor", "fetched", "cleaned", "loaded",
                   "quarantined", "updated"):
        table.add_column(column)
    for c in checkpoints:
        table.add_row(c.run_id, str(c.shard), shard_status(c), str(c.cursor),
                      f"{c.rows_fetched:,}", f"{c.rows_cleaned:,}", f"{c.rows_loaded:,}",
                      f"{c.rows_quarantined:,}", c.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


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
        out.print(f"{e.at:%Y-%m-%d %H:%M:%S} {e.run_id} {e.stage} shard {e.shard} batch "
                  f"{e.batch}: {e.error_type}: {mask_url(e.message)}", markup=False)
        if show_traceback:
            out.print(mask_url(e.traceback), markup=False)


@click.command("config")
def config_command() -> None:
    """Show the settings in force (passwords masked) and where each came from."""
    conf = settings()
    table = Table(title="settings")
    for column in ("setting", "value", "from", "environment variable"):
        table.add_column(column)
    for name, env_name in ENV_NAMES.items():
        table.add_row(name, mask_url(getattr(conf, name)) or "-", conf.sources[name], env_name)
    out.print(table)
