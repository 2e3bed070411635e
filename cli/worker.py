"""`etl worker` and `etl reconcile`."""

from __future__ import annotations

import click

from cli.common import err, out, settings
from etl.brokers import is_embedded
from etl.runtime.distributed import Sender
from etl.core.config import check_queue_name
from etl.core.errors import ConfigError
from etl.runtime.reconcile import STALE_AFTER, reconcile
from etl.stores import open_results
from etl.core.urls import mask_url
from etl.runtime.worker import WorkerOptions, probe_broker, require_broker, serve


class _QueueOption(click.Option):
    """--queue, whose help names the `queue` setting in force where the help is shown (from
    ETL_QUEUE, etl.toml or setup.cfg), not a fixed default: a worker started with ETL_QUEUE
    set does not work the queue `etl`."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        try:
            conf = settings()
            where = conf.sources["queue"]
            now = f", now {conf.queue!r} from {'ETL_QUEUE' if where == 'environment' else where}"
        except Exception:  # noqa: BLE001 - a broken etl.toml is said when the worker starts
            now = ""
        original = self.help
        self.help = (original or "").replace("{now}", now)
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = original


@click.command("worker")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (supervised: one that dies is restarted).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker threads per process.")
@click.option("--queue", "queues", multiple=True, cls=_QueueOption,
              help="Queue to consume (repeatable; default: the `queue` setting{now}). A "
                   "pipeline with its own Pipeline.queue is worked only where it is named.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535),
              help="Serve Prometheus metrics on this port (process i of N on port + i).")
@click.option("--preload", "preload", multiple=True, metavar="MODULE:ATTR",
              help="Parse this pipeline's source at start, before work arrives (repeatable; "
                   "default: the `pipeline` setting when set).")
@click.option("--burst", is_flag=True,
              help="Exit (status 0) once the queue(s) are empty and nothing is in flight.")
def worker_command(processes: int, threads: int, queues: tuple[str, ...],
                   metrics_port: int | None, preload: tuple[str, ...], burst: bool) -> None:
    """Work the ETL queue(s) of the configured broker until SIGTERM or Ctrl-C."""
    conf = settings()
    for queue in queues:
        check_queue_name(queue, where="--queue")
    require_broker(conf)
    probe_broker(conf)  # a refused login or a dead broker: one line, exit 3, nothing started
    options = WorkerOptions(threads=threads, queues=tuple(dict.fromkeys(queues)),
                            metrics_port=metrics_port,
                            preload=preload or ((conf.pipeline,) if conf.pipeline else ()),
                            burst=burst)
    err.print(f"worker: {processes} process(es) x {threads} thread(s) on "
              f"{mask_url(conf.broker_url)} queue(s) {', '.join(options.queues_of(conf))}; "
              f"state {mask_url(conf.state_url)}")
    serve(conf, options, processes=processes)


@click.command("reconcile")
@click.argument("run_id")
@click.option("--stale-after", type=click.FloatRange(min=0), default=STALE_AFTER,
              show_default=True, help="Seconds a shard may sit still, with messages queued, "
                                      "before its work counts as lost.")
@click.option("--force", is_flag=True, help="Re-send all unfinished work no live lease covers.")
@click.option("--dry-run", is_flag=True, help="Only show what would be sent.")
def reconcile_command(run_id: str, stale_after: float, force: bool, dry_run: bool) -> None:
    """Re-send the work RUN_ID is missing (no live lease, no message on its way)."""
    conf = settings()
    if is_embedded(conf.broker_url):
        raise ConfigError("etl reconcile works on a broker; in embedded mode `etl run` resumes")
    # with the result recorder: each step re-sent gets its "queued" record, as a step sent
    # by `etl run` does (without it, the worker that takes the step finds no record to start)
    results = open_results(conf.results_url, required=False)
    sender = Sender(conf, results=results)
    try:
        context = sender.contexts.get(run_id)
        outcome = reconcile(context, sender.actors, queues=sender.queues,
                            queue=sender.queue_of(context), stale_after=stale_after,
                            force=force, dry_run=dry_run)
    finally:
        sender.close()  # (its recorder's records written first)
        if results is not None:
            results.close()
    verb = "would send" if dry_run else "sent"
    out.print(f"run {run_id}: {verb} {len(outcome.sent)}, leased {len(outcome.leased)}, "
              f"probably queued {len(outcome.waiting)}; queue "
              f"{'idle' if outcome.queue_idle else 'busy'}")
    for stage, shard, batch in outcome.sent:
        out.print(f"  {verb} {stage} shard {shard} batch {batch}")
