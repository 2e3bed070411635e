"""Everyday commands as a user runs them (real `etl` subprocesses, real files): `etl runs`,
`etl checkpoints` on the newest run, one JSON document for every --json, `etl metrics` in
embedded mode and over several scraped processes, the replay bar, the settings workers must
share, and `etl worker --queue` help under ETL_QUEUE."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]

PIPELINES = """
from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards
from stages import DropRows

orders = Pipeline(name="orders", source=FileSource("orders.csv"),
                  stages=[DropRows("amount < 0", reason="negative amount")],
                  sink=ParquetSink("out"), key=["id"], shards=RangeShards("id", 2),
                  batch_size=10)
refunds_ok = Pipeline(name="orders", source=FileSource("orders.csv"), stages=[],
                      sink=ParquetSink("out"), key=["id"], shards=RangeShards("id", 2),
                      batch_size=10)
"""


def etl(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    base.update(PYTHONPATH=f"{ROOT}{os.pathsep}{workdir}", **env)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=base,
                          text=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two completed runs of 100 rows (10 batches), every 10th amount negative: run ids,
    oldest first."""
    workdir = tmp_path_factory.mktemp("project")
    (workdir / "pipes.py").write_text(textwrap.dedent(PIPELINES))
    lines = ["id,amount"] + [f"{i},{-i if i % 10 == 3 else i}.5" for i in range(100)]
    (workdir / "orders.csv").write_text("\n".join(lines) + "\n")
    runs = []
    for _ in range(2):
        done = etl(workdir, "run", "-p", "pipes:orders", "--fresh", "--no-progress")
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(etl(workdir, "status", "--json").stdout)["run"]["run_id"])
    return workdir, runs


def test_runs_lists_runs_newest_first_with_rows_and_time(project: tuple[Path, list[str]]) -> None:
    workdir, (older, newer) = project
    # When the runs are listed
    shown = etl(workdir, "runs")
    # Then the newest comes first, with its pipeline, status, rows and time
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.index(newer) < shown.stdout.index(older)
    row = next(line for line in shown.stdout.splitlines() if newer in line)
    assert "orders" in row and "completed" in row and "90" in row and "10" in row
    assert re.search(r"\d+\.\d s", row), row
    # And --json is one array of the same runs; --limit keeps the newest
    runs = json.loads(etl(workdir, "runs", "--json").stdout)
    assert [r["run_id"] for r in runs] == [newer, older]
    assert runs[0]["rows_loaded"] == 90 and runs[0]["rows_quarantined"] == 10
    assert runs[0]["took_seconds"] is not None and runs[0]["status"] == "completed"
    assert [r["run_id"] for r in json.loads(etl(workdir, "runs", "--json", "--limit", "1").stdout)] == [newer]


def test_checkpoints_shows_the_newest_run_unless_told(project: tuple[Path, list[str]]) -> None:
    workdir, (older, newer) = project
    # When checkpoints are listed without options
    newest = json.loads(etl(workdir, "checkpoints", "--json").stdout)
    # Then they are the newest run's two shards only
    assert {c["run_id"] for c in newest} == {newer} and len(newest) == 2
    # And --run picks a run, --all shows every run, newest first
    assert {c["run_id"] for c in json.loads(etl(workdir, "checkpoints", "--run", older,
                                                "--json").stdout)} == {older}
    every = json.loads(etl(workdir, "checkpoints", "--all", "--json").stdout)
    assert [c["run_id"] for c in every] == [newer, newer, older, older]
    table = etl(workdir, "checkpoints").stdout
    assert newer in table and older not in table


@pytest.mark.parametrize("args", [
    ["status", "--json"], ["runs", "--json"], ["checkpoints", "--json"], ["errors", "--json"],
    ["config", "--json"], ["metrics", "--json"], ["quarantine", "list", "{run}", "--json"],
])
def test_every_json_option_prints_one_json_document(project: tuple[Path, list[str]],
                                                    args: list[str]) -> None:
    workdir, (_, newer) = project
    # When a command prints --json
    shown = etl(workdir, *[a.replace("{run}", newer) for a in args])
    # Then its whole output is one JSON document (json.loads refuses JSON lines)
    assert shown.returncode == 0, shown.stderr
    assert isinstance(json.loads(shown.stdout), (dict, list))


def test_quarantine_list_json_is_one_array_of_rows(project: tuple[Path, list[str]]) -> None:
    workdir, (_, newer) = project
    rows = json.loads(etl(workdir, "quarantine", "list", newer, "--json").stdout)
    assert len(rows) == 10 and {r["_reason"] for r in rows} == {"negative amount"}


def test_metrics_in_embedded_mode_shows_the_runs_recorded_counts(
        project: tuple[Path, list[str]]) -> None:
    workdir, (_, newer) = project
    # When `etl metrics` runs where no worker serves metrics (embedded mode)
    shown = json.loads(etl(workdir, "metrics", "--json").stdout)
    # Then it shows the newest run's rows as recorded, not an empty table
    rows = {m["labels"]["kind"]: m["value"] for m in shown["metrics"]
            if m["name"] == "etl_run_rows" and m["labels"]["run"] == newer}
    assert rows == {"fetched": 100, "cleaned": 90, "quarantined": 10, "loaded": 90}
    batches = {m["labels"]["stage"]: m["value"] for m in shown["metrics"]
               if m["name"] == "etl_run_batches"}
    assert set(batches) == {"fetch", "clean", "load"} and len(set(batches.values())) == 1
    assert batches["load"] >= 10
    assert "etl_run_rows" in etl(workdir, "metrics").stdout


def test_scraping_two_processes_counts_shared_gauges_once(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    # Given two worker processes' endpoints: each read the same queue (2 consumers) and the
    # same run's shards at scrape time, and each loaded 500 rows itself
    servers, urls = [], []
    for _ in range(2):
        registry = CollectorRegistry()
        Gauge("etl_queue_consumers", "c", ["queue"], registry=registry).labels("q").set(2)
        Gauge("etl_run_shards", "s", ["run", "pipeline", "state"],
              registry=registry).labels("r1", "orders", "total").set(4)
        Counter("etl_rows", "rows", ["pipeline", "stage", "kind"],
                registry=registry).labels("orders", "load", "loaded").inc(500)
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
        urls += ["--scrape", f"http://127.0.0.1:{port}/metrics"]
    try:
        # When `etl metrics` scrapes both
        shown = etl(tmp_path, "metrics", *urls, "--json")
    finally:
        for server, thread in servers:
            server.shutdown()
            thread.join(timeout=10)
    # Then the queue has 2 consumers and the run 4 shards, while the rows add up
    assert shown.returncode == 0, shown.stderr
    values = {(m["name"], tuple(sorted(m["labels"].items()))): m["value"]
              for m in json.loads(shown.stdout)["metrics"]}
    assert values[("etl_queue_consumers", (("queue", "q"),))] == 2
    assert values[("etl_run_shards", (("pipeline", "orders"), ("run", "r1"), ("state", "total")))] == 4
    assert values[("etl_rows_total", (("kind", "loaded"), ("pipeline", "orders"),
                                      ("stage", "load")))] == 1000


def test_replay_bar_ends_at_every_batch_and_its_title_keeps_the_run_id_whole(
        project: tuple[Path, list[str]]) -> None:
    workdir, (_, newer) = project
    # When the newest run's quarantine (rows in every batch) is replayed after the fix
    replayed = etl(workdir, "quarantine", "replay", newer, "-p", "pipes:refunds_ok")
    # Then the bar ends full (10/10, not 9/10), and the summary's title holds the run id on
    # one line
    assert replayed.returncode == 0, replayed.stderr
    done, total = re.findall(r"(\d+)/(\d+)", replayed.stderr)[-1]
    assert done == total and int(total) >= 10, replayed.stderr
    assert f"replay {newer}-replay1 (generation 1): completed" in replayed.stdout, replayed.stdout


def test_config_names_the_settings_workers_must_share(tmp_path: Path) -> None:
    shown = etl(tmp_path, "config", "--json", ETL_QUEUE="orders")
    settings = {s["setting"]: s for s in json.loads(shown.stdout)}
    assert settings["queue"]["value"] == "orders" and settings["queue"]["from"] == "environment"
    assert settings["broker_url"]["workers_must_share"] and settings["demo_output"]["workers_must_share"]
    assert settings["api_token"]["workers_must_share"] is None
    assert "workers must share" in etl(tmp_path, "config").stdout


def test_worker_queue_help_names_the_queue_setting_in_force(tmp_path: Path) -> None:
    # When ETL_QUEUE is set, --help says that queue is the default, not "etl"
    shown = " ".join(etl(tmp_path, "worker", "--help", ETL_QUEUE="orders").stdout.split())
    assert "now 'orders' from ETL_QUEUE" in shown and "setting, etl)" not in shown
    plain = " ".join(etl(tmp_path, "worker", "--help").stdout.split())
    assert "now 'etl' from default" in plain


@pytest.mark.services
@pytest.mark.parametrize("cluster", ["rabbitmq"], indirect=True)
def test_scraping_a_worker_of_two_processes_reports_the_queues_consumers_once(
        cluster: Cluster) -> None:
    import time
    import urllib.request

    # Given `etl worker --processes 2` serving metrics on two ports
    port = free_port()
    cluster.start_worker("--processes", "2", "--metrics-port", str(port))
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(2)]
    deadline = time.monotonic() + 60
    while True:
        try:
            for url in urls:
                urllib.request.urlopen(url, timeout=5).read()
            consumers = json.loads(cluster.etl("queues", "--json").stdout)[0]["consumers"]
            if consumers >= 2:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the worker's processes did not come up"
        time.sleep(0.5)
    # When `etl metrics` scrapes both processes
    shown = cluster.etl("metrics", "--scrape", urls[0], "--scrape", urls[1], "--json")
    # Then the queue has the consumers the broker counts, not twice as many
    assert shown.returncode == 0, shown.stderr
    scraped = [m["value"] for m in json.loads(shown.stdout)["metrics"]
               if m["name"] == "etl_queue_consumers" and m["labels"]["queue"] == cluster.env["ETL_QUEUE"]]
    assert scraped == [consumers], (scraped, consumers)
