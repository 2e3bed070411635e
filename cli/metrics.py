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

from cli.common import out, settings, state_store
from etl.brokers import is_embedded, open_broker, queues_of
from etl.core.errors import EtlError
from etl.runtime.metrics import StateCollector, quantile
from etl.core.urls import mask_url


def _local_snapshot() -> str:
    """The scrape-time gauges (queues, runs), read here from the configured stores."""
    conf = settings()
    broker = None if is_embedded(conf.broker_url) else open_broker(conf.broker_url)
    registry = CollectorRegistry()
    registry.register(StateCollector(state_store(conf), names=[conf.queue],
                                     queues=queues_of(broker) if broker else None))
    try:
        return generate_latest(registry).decode()
    finally:
        if broker is not None:
            broker.close()


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - user's URL
            return response.read().decode()
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, cut off, bad URL
        raise EtlError(f"cannot scrape {mask_url(url)}: {type(exc).__name__}: {exc}") from exc


@click.command("metrics")
@click.option("--scrape", "urls", multiple=True, metavar="URL",
              help="A worker's metrics endpoint (http://host:port/metrics); repeatable. "
                   "Without it: queue and run gauges read from the configured stores.")
@click.option("--raw", is_flag=True, help="Print the Prometheus text format as it is.")
def metrics_command(urls: tuple[str, ...], raw: bool) -> None:
    """A snapshot of the metrics: counters, gauges, and per stage the batch latency p50/p95
    and the rows per second of busy time (rows through the stage / time in its batches)."""
    texts = [_scrape(url) for url in urls] if urls else [_local_snapshot()]
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
                elif not sample.name.endswith(("_created", "_sum")):
                    values[(sample.name, tuple(sorted(labels.items())))] += sample.value
    table = Table(title="etl metrics" + (f" from {len(urls)} endpoint(s)" if urls else ""))
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    for (name, labels), value in sorted(values.items()):
        whole = math.isfinite(value) and value == int(value)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in labels),
                      f"{value:,.0f}" if whole else f"{value:,.3f}")
    out.print(table)
    if buckets:
        latency = Table(title="batch latency (s)")
        for column in ("pipeline", "stage", "count", "p50", "p95", "rows", "rows/s busy"):
            latency.add_column(column, justify="right" if column not in ("pipeline", "stage") else "left")
        for (pipeline, stage), by_bound in sorted(buckets.items()):
            points = sorted(by_bound.items())
            p50, p95 = quantile(points, 0.5), quantile(points, 0.95)
            moved, seconds = rows.get((pipeline, stage), 0.0), busy.get((pipeline, stage), 0.0)
            latency.add_row(pipeline, stage, f"{points[-1][1]:,.0f}",
                            "-" if p50 is None else f"{p50:.3f}", "-" if p95 is None else f"{p95:.3f}",
                            f"{moved:,.0f}", f"{moved / seconds:,.0f}" if seconds > 0 else "-")
        out.print(latency)
