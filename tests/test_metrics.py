"""Prometheus metrics: scraped from a real `etl worker` during a run, and the p50/p95 maths."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl.runtime.metrics import quantile
from tests.conftest import free_port
from tests.cluster import ETL, Cluster


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    # Given 10 observations: 4 under 0.1 s, 4 more under 0.5 s, 2 more under 1 s
    buckets = [(0.1, 4.0), (0.5, 8.0), (1.0, 10.0), (float("inf"), 10.0)]
    # Then the median is 5th of 10: inside (0.1, 0.5], a quarter of the way
    assert quantile(buckets, 0.5) == pytest.approx(0.2)
    # And p95 is 9.5th: inside (0.5, 1.0], three quarters of the way
    assert quantile(buckets, 0.95) == pytest.approx(0.875)
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_etl_metrics_shows_rows_per_second_of_busy_time_per_stage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

    from etl.runtime.metrics import LATENCY_BUCKETS

    # Given an endpoint where fetch moved 1,000 rows in 4 batches of 0.5 s, and clean 900
    # cleaned + 100 quarantined rows in 4 batches of 0.25 s
    registry = CollectorRegistry()
    rows = Counter("etl_rows", "rows", ["pipeline", "stage", "kind"], registry=registry)
    latency = Histogram("etl_batch_seconds", "latency", ["pipeline", "stage"],
                        buckets=LATENCY_BUCKETS, registry=registry)
    rows.labels("orders", "fetch", "fetched").inc(1000)
    rows.labels("orders", "clean", "cleaned").inc(900)
    rows.labels("orders", "clean", "quarantined").inc(100)
    for _ in range(4):
        latency.labels("orders", "fetch").observe(0.5)
        latency.labels("orders", "clean").observe(0.25)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        # When `etl metrics` scrapes it
        shown = subprocess.run([*ETL, "metrics", "--scrape", f"http://127.0.0.1:{port}/metrics"],
                               cwd=tmp_path, text=True, capture_output=True, timeout=60)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    # Then each stage's row shows its rows and rows per busy second: 1,000/2 s and 1,000/1 s
    assert shown.returncode == 0, shown.stderr
    lines = {cells[1]: cells for cells in (
        [c.strip() for c in line.strip("│").split("│")]
        for line in shown.stdout.splitlines() if line.startswith("│") and "orders" in line)
        if len(cells) == 7}
    assert lines["fetch"][2] == "4" and lines["fetch"][5:] == ["1,000", "500"], shown.stdout
    assert lines["clean"][2] == "4" and lines["clean"][5:] == ["1,000", "1,000"], shown.stdout


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _total(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


@pytest.mark.slow
@pytest.mark.services
def test_worker_metrics_scraped_during_and_after_a_run(cluster: Cluster) -> None:
    # Given a worker serving metrics, and the demo run sent to it
    port = free_port()
    worker = subprocess.Popen([*ETL, "worker", "--threads", "2", "--metrics-port", str(port)],
                              cwd=cluster.workdir, env=cluster.env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster.workers.append(worker)
    run_id = cluster.enqueue("--shards", "20", "--batch-size", "5000")
    # When it is scraped while the run is under way
    during = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not cluster.complete(run_id):
        try:
            during = _scrape(port)
        except OSError:
            time.sleep(0.1)
            continue
        if _total(during, "etl_rows_total", kind="loaded") > 0 and not cluster.complete(run_id):
            break
        time.sleep(0.1)
    # Then the run's progress gauges are there, unfinished
    assert during is not None
    assert _total(during, "etl_run_shards", run=run_id, state="total") == 20
    assert _total(during, "etl_queue_consumers") >= 1
    # When the run ends
    final = cluster.etl("run", "--run-id", run_id, "--wait", "--no-progress", timeout=300)
    assert final.returncode == 0, final.stderr
    after = _scrape(port)
    # Then every row is counted once per stage, and rows in = cleaned + quarantined
    fetched = _total(after, "etl_rows_total", pipeline="flights", kind="fetched")
    cleaned = _total(after, "etl_rows_total", pipeline="flights", kind="cleaned")
    quarantined = _total(after, "etl_rows_total", pipeline="flights", kind="quarantined")
    loaded = _total(after, "etl_rows_total", pipeline="flights", kind="loaded")
    assert fetched == 336_776 and fetched == cleaned + quarantined and loaded == cleaned
    # And each stage's latency histogram counted its batches (69 of 5,000 rows at most)
    for stage in ("fetch", "clean", "load"):
        assert _total(after, "etl_batch_seconds_count", stage=stage) >= 20
    assert _total(after, "etl_batches_total", stage="load", outcome="done") >= 20
    assert _total(after, "etl_batches_total", outcome="failed") == 0
    # And `etl metrics --scrape` prints them with p50/p95 per stage
    snapshot = cluster.etl("metrics", "--scrape", f"http://127.0.0.1:{port}/metrics")
    assert snapshot.returncode == 0, snapshot.stderr
    assert "batch latency" in snapshot.stdout and "p95" in snapshot.stdout
    assert "etl_rows_total" in snapshot.stdout
    # And the result store has a completed record for every load message, the "queued" ones
    # written by the enqueuing process before it exited
    records = json.loads(cluster.etl("results", "list", "--run", run_id, "--json", "--limit",
                                     "1000").stdout)
    loads = [r for r in records if r["function"] == "etl_load"]
    assert len(loads) >= 69 and {r["status"] for r in loads} == {"completed"}
    assert all(r["history"][0]["status"] == "pending" for r in loads)
    # And without --scrape it shows the queue read from the broker
    local = cluster.etl("metrics")
    assert local.returncode == 0 and "etl_queue_messages" in local.stdout, local.stderr
