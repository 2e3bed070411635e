"""`etl metrics`: a snapshot of the toolkit's Prometheus metrics."""

from __future__ import annotations

import http.client
import math
import urllib.request
from collections import defaultdict

import click
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from cli.common import out, settings, state_store, to_json
from etl.brokers import is_embedded, open_broker, queues_of
from etl.core.errors import ConfigError, EtlError
from etl.inspect.recorded import RecordedRun
from etl.runtime.metrics import StateCollector, quantile
from etl.core.urls import mask_url


def _local_snapshot(run_id: str | None) -> str:
    """The scrape-time gauges (queues, unfinished runs) read here from the configured
    stores, and the counts the run (`run_id`, default the newest) recorded: an embedded run
    counted in its own process, gone now, and a finished run has no gauge of its own."""
    conf = settings()
    broker = None if is_embedded(conf.broker_url) else open_broker(conf.broker_url)
    state = state_store(conf)
    registry = CollectorRegistry()
    registry.register(StateCollector(state, names=[conf.queue],
                                     queues=queues_of(broker) if broker else None))
    if run_id is not None:
        run = state.get_run(run_id)
        if run is None:
            raise ConfigError(f"run {run_id!r} not found in {state.url}")
        registry.register(RecordedRun(state, run))
    elif runs := state.list_runs(limit=1):
        registry.register(RecordedRun(state, runs[0]))
    try:
        return generate_latest(registry).decode()
    finally:
        if broker is not None:
            broker.close()


#: Gauges every worker process reads from the same broker and state store at scrape time:
#: scraped from several processes they are one value each, not a sum (two processes of one
#: queue with 2 consumers report 2 each; the queue has 2, not 4).
SHARED_GAUGES = ("etl_queue_", "etl_run_")


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - user's URL
            return response.read().decode()
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, cut off, bad URL
        raise EtlError(f"cannot scrape {mask_url(url)}: {type(exc).__name__}: {exc}") from exc


@click.command("metrics")
@click.option("--scrape", "urls", multiple=True, metavar="URL",
              help="A worker's metrics endpoint (http://host:port/metrics); repeatable. "
                   "Without it: the queue gauges, and the counts the newest run (or --run) "
                   "recorded in the state store.")
@click.option("--run", "run_id", help="Without --scrape: the run whose recorded counts to "
                                       "show (default: the newest run).")
@click.option("--raw", is_flag=True, help="Print the Prometheus text format as it is.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON object (metrics, latency).")
def metrics_command(urls: tuple[str, ...], run_id: str | None, raw: bool, as_json: bool) -> None:
    """A snapshot of the metrics: counters, gauges, and per stage the batch latency p50/p95
    and the rows per second of busy time (rows through the stage / time in its batches)."""
    if urls and run_id:
        raise click.UsageError("--run reads the state store; it does not go with --scrape")
    texts = [_scrape(url) for url in urls] if urls else [_local_snapshot(run_id)]
    if raw:
        for text in texts:
            out.print(text, markup=False, end="")
        return
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    buckets: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    busy: dict[tuple[str, str], float] = defaultdict(float)  # seconds in batches
    rows: dict[tuple[str, str], float] = defaultdict(float)  # rows through the stage
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("etl_"):
                continue
            shared = family.type == "gauge" and family.name.startswith(SHARED_GAUGES)
            for sample in family.samples:
                labels = dict(sample.labels)
                where = (labels.get("pipeline", ""), labels.get("stage", ""))
                if sample.name == "etl_batch_seconds_sum":
                    busy[where] += sample.value
                elif sample.name == "etl_rows_total":
                    rows[where] += sample.value
                if sample.name.endswith("_bucket"):
                    bound = float(labels.pop("le"))
                    buckets[(labels.get("pipeline", ""), labels.get("stage", ""))][bound] += sample.value
                elif shared:  # the same gauge seen from every process: counted once
                    key = (sample.name, tuple(sorted(labels.items())))
                    values[key] = max(values[key], sample.value) if key in values else sample.value
                elif not sample.name.endswith(("_created", "_sum")):
                    values[(sample.name, tuple(sorted(labels.items())))] += sample.value
    latencies = []
    for (pipeline, stage), by_bound in sorted(buckets.items()):
        points = sorted(by_bound.items())
        moved, seconds = rows.get((pipeline, stage), 0.0), busy.get((pipeline, stage), 0.0)
        latencies.append({"pipeline": pipeline, "stage": stage, "count": points[-1][1],
                          "p50": quantile(points, 0.5), "p95": quantile(points, 0.95),
                          "rows": moved, "rows_per_busy_second": moved / seconds if seconds > 0 else None})
    if as_json:
        out.print_json(to_json({
            "metrics": [{"name": name, "labels": dict(labels), "value": value}
                        for (name, labels), value in sorted(values.items())],
            "latency": latencies}))
        return
    table = Table(title="etl metrics" + (f" from {len(urls)} endpoint(s)" if urls else ""))
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    for (name, labels), value in sorted(values.items()):
        whole = math.isfinite(value) and value == int(value)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in labels),
                      f"{value:,.0f}" if whole else f"{value:,.3f}")
    out.print(table)
    if not values:
        out.print("nothing counted yet: no run in the state store, and no queue read",
                  markup=False)
    if latencies:
        latency = Table(title="batch latency (s)")
        for column in ("pipeline", "stage", "count", "p50", "p95", "rows", "rows/s busy"):
            latency.add_column(column, justify="right" if column not in ("pipeline", "stage") else "left")
        for line in latencies:
            rate = line["rows_per_busy_second"]
            latency.add_row(line["pipeline"], line["stage"], f"{line['count']:,.0f}",
                            "-" if line["p50"] is None else f"{line['p50']:.3f}",
                            "-" if line["p95"] is None else f"{line['p95']:.3f}",
                            f"{line['rows']:,.0f}", "-" if rate is None else f"{rate:,.0f}")
        out.print(latency)
