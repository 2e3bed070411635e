"""`etl results`: look up task records (get, list, stats, delete, health, cleanup)."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import out, result_store, settings, to_json
from etl.core.errors import EtlError
from etl.core.urls import mask_url
from results import JobResult
from results.errors import JobNotFound


def _store():  # type: ignore[no-untyped-def]
    store = result_store(settings())
    assert store is not None
    return store


@click.group("results")
def results_group() -> None:
    """Task results: status lifecycle, result, error, timings, history."""


@results_group.command("get")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def get_command(job_id: str, as_json: bool) -> None:
    """Show one task's record and its history."""
    job = _store().get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    if as_json:
        out.print_json(to_json(job))
        return
    table = Table(title=f"job {job.job_id}", show_header=False)
    for name in ("function", "status", "run_id", "stage", "queue", "args", "result", "error_type",
                 "error", "retry_count", "max_retries", "worker_id", "progress", "created_at",
                 "queued_at", "started_at", "completed_at", "duration", "updated_at",
                 "expires_at", "metadata"):
        table.add_row(name, mask_url(str(getattr(job, name))))
    out.print(table)
    for step in job.history:
        out.print(f"  {step.at:%Y-%m-%d %H:%M:%S.%f}  {step.status}"
                  + (f"  {mask_url(step.note)}" if step.note else ""), markup=False)


def _row(job: JobResult) -> list[str]:
    return [job.job_id, job.function, job.status,
            mask_url(str(job.args[1:3] if job.run_id else job.args))[:40],
            f"{job.duration:.3f}" if job.duration is not None else "-",
            mask_url(f"{job.error_type}: {job.error}" if job.error_type else str(job.result or ""))[:60]]


@results_group.command("list")
@click.option("--run", "run_id", help="Only tasks of this run.")
@click.option("--status", type=click.Choice([s.value for s in __import__("results").JobStatus]))
@click.option("--queue")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_command(run_id: str | None, status: str | None, queue: str | None, limit: int,
                 as_json: bool) -> None:
    """Tasks, newest first."""
    jobs = _store().list(run_id=run_id, status=status, queue=queue, limit=limit)
    if as_json:
        out.print_json(to_json(jobs))
        return
    table = Table(title=f"{len(jobs)} task(s)")
    for column in ("job id", "function", "status", "shard/batch", "seconds", "result / error"):
        table.add_column(column)
    for job in jobs:
        table.add_row(*_row(job))
    out.print(table)


@results_group.command("stats")
@click.option("--json", "as_json", is_flag=True)
def stats_command(as_json: bool) -> None:
    """Totals by status and queue, success rate, mean duration, and the store's kind."""
    stats = _store().stats()
    if as_json:
        out.print_json(to_json(stats))
        return
    rate = stats.get("success_rate")
    mean = stats.get("avg_duration")
    out.print(f"{stats['total']} task(s) in {stats.get('store', '?')}; success rate "
              + (f"{rate:.1%}" if rate is not None else "- (none finished)")
              + (f"; mean duration {mean:.3f} s" if mean is not None else ""), markup=False)
    out.print("by status:")
    for status, count in sorted(stats["by_status"].items()):
        out.print(f"  {status:12s} {count}", markup=False)
    out.print("by queue:")
    for queue, count in sorted(stats["by_queue"].items()):
        out.print(f"  {queue:12s} {count}", markup=False)


@results_group.command("delete")
@click.argument("job_ids", nargs=-1)
@click.option("--run", "run_id", help="Every record of this run.")
def delete_command(job_ids: tuple[str, ...], run_id: str | None) -> None:
    """Delete task records: JOB_ID ..., or every record of --run RUN."""
    if not job_ids and not run_id:
        raise click.UsageError("name JOB_ID(s) or --run RUN")
    store = _store()
    missing = [job_id for job_id in job_ids if not store.delete(job_id)]
    deleted = len(job_ids) - len(missing)
    if run_id:
        while page := [job.job_id for job in store.list(run_id=run_id, limit=1000)]:
            deleted += sum(store.delete(job_id) for job_id in page)  # a page at a time
    out.print(f"deleted {deleted} record(s)")
    if missing:
        raise EtlError(f"no record of job(s) {', '.join(missing)} (never stored, deleted, "
                       "or expired)")


@results_group.command("health")
@click.option("--json", "as_json", is_flag=True)
def health_command(as_json: bool) -> None:
    """Write, read and delete a probe record: the store answers, and how fast."""
    from results.health import check

    report = check(_store())
    if as_json:
        out.print_json(to_json(report))
        return
    out.print(f"ok: {report['store']} round trip {report['round_trip_ms']:.1f} ms (write "
              f"{report['write_ms']:.1f}, read {report['read_ms']:.1f}, delete "
              f"{report['delete_ms']:.1f})", markup=False)


@results_group.command("cleanup")
def cleanup_command() -> None:
    """Remove expired records now (and stale index entries on Redis)."""
    out.print(f"removed {_store().cleanup_expired()} expired record(s)")
