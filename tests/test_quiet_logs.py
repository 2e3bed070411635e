"""Quiet, honest logs, as a user sees them from real `etl` processes: one WARNING line per
failed batch with its cause, tracebacks only in TaskErrorLog and at -vv, schema drift said
once per run with a count, and `etl status` showing the cause of a shard's error while the
shard is not done, and nothing once it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]


def etl(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    base.update(PYTHONPATH=f"{ROOT}{os.pathsep}{workdir}", **env)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=base,
                          text=True, capture_output=True, timeout=300)


PIPELINE = """
import os

import pandas as pd

from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards
from stages import StageResult


class Explode:
    '''Fails every batch holding an id in BROKEN_IDS (an environment variable), as a stage
    with a bug would: ValueError, not a rejected row.'''

    name = "explode"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        broken = {int(i) for i in os.environ.get("BROKEN_IDS", "").split(",") if i}
        if broken & set(frame["id"]):
            raise ValueError("amount column exploded")
        return StageResult(frame)


orders = Pipeline(name="orders", source=FileSource("orders.csv"), stages=[Explode()],
                  sink=ParquetSink("out"), key=["id"], shards=RangeShards("id", 2),
                  batch_size=10)

drifting = Pipeline(name="drifting", source=FileSource("orders.csv"), stages=[],
                    sink=ParquetSink("out_drift"), key=["id"], shards=RangeShards("id", 1),
                    batch_size=10, expected_schema={"id": "integer", "amount": "float"})
"""


def _project(workdir: Path, rows: int = 100) -> None:
    (workdir / "pipes.py").write_text(textwrap.dedent(PIPELINE))
    lines = ["id,amount,note"] + [f"{i},{i * 1.5},n{i}" for i in range(rows)]
    (workdir / "orders.csv").write_text("\n".join(lines) + "\n")


def _log_lines(stderr: str, level: str) -> list[str]:
    return [line for line in stderr.splitlines() if f" {level} " in line]


def test_a_failed_batch_is_one_warning_line_with_its_cause(tmp_path: Path) -> None:
    # Given a pipeline whose stage fails the batches holding ids 5 and 75 (one per shard)
    _project(tmp_path)
    # When it runs
    result = etl(tmp_path, "run", "-p", "pipes:orders", "--no-progress", BROKEN_IDS="5,75")
    # Then each failed batch is one WARNING line naming the batch and the cause
    assert result.returncode == 1, result.stderr
    warnings = _log_lines(result.stderr, "WARNING")
    failed = [line for line in warnings if "failed:" in line]
    assert len(failed) == 2, result.stderr
    assert all("ValueError: amount column exploded" in line for line in failed), failed
    assert {line.split(" shard ")[1].split(" failed")[0] for line in failed} == {
        "0 batch 0", "1 batch 2"}, failed
    # And the log has no ERROR line, no traceback and no object URL in front of the cause
    assert not _log_lines(result.stderr, "ERROR"), result.stderr
    assert "Traceback" not in result.stderr
    assert not any("object file://" in line for line in failed)
    # And the traceback is in TaskErrorLog
    errors = json.loads(etl(tmp_path, "errors", "--json").stdout)
    assert len(errors) == 2 and all("Traceback" in e["traceback"] for e in errors)
    # And `etl errors` says where once per line, then the cause
    listed = etl(tmp_path, "errors").stdout.splitlines()
    assert len(listed) == 2 and all(line.endswith("amount column exploded") for line in listed)
    assert not any("(object " in line for line in listed), listed


def test_minus_vv_shows_the_traceback(tmp_path: Path) -> None:
    # Given the same failing pipeline
    _project(tmp_path)
    # When it runs with -vv
    result = etl(tmp_path, "-vv", "run", "-p", "pipes:orders", "--no-progress", BROKEN_IDS="5")
    # Then the traceback of the failure is logged, at DEBUG
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "amount column exploded" in result.stderr


def test_status_shows_the_cause_while_a_shard_is_not_done_and_nothing_once_it_is(
        tmp_path: Path) -> None:
    # Given a run whose shard 0 failed on a batch
    _project(tmp_path)
    assert etl(tmp_path, "run", "-p", "pipes:orders", "--no-progress",
               BROKEN_IDS="5").returncode == 1
    # When `etl status` shows it
    failed = etl(tmp_path, "status")
    # Then shard 0's last error is its step, batch and cause, not cut before the cause
    row = next(line for line in failed.stdout.splitlines() if line.startswith("│     0"))
    assert "clean batch 0: ValueError: amount column exploded" in row, failed.stdout
    # When the cause is fixed and the run resumed to completion
    resumed = etl(tmp_path, "run", "-p", "pipes:orders", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    # Then no shard shows an error any more: they are done
    done = etl(tmp_path, "status")
    assert "exploded" not in done.stdout and "ValueError" not in done.stdout, done.stdout


def test_schema_drift_is_said_once_per_run_with_the_number_of_batches(tmp_path: Path) -> None:
    # Given a pipeline expecting no `note` column, over a source of 10 batches that has one
    _project(tmp_path)
    # When it runs
    result = etl(tmp_path, "run", "-p", "pipes:drifting", "--no-progress")
    # Then it completes, and the drift is one WARNING line counting the 10 batches
    assert result.returncode == 0, result.stderr
    drift = [line for line in result.stderr.splitlines() if "schema drift" in line]
    assert len(drift) == 1, result.stderr
    assert "schema drift in 10 of 10 batch(es): unexpected note; policy evolve" in drift[0]
    # And TaskErrorLog still has each drifted batch
    errors = json.loads(etl(tmp_path, "errors", "--json", "--limit", "100").stdout)
    assert sum(e["stage"] == "schema" for e in errors) == 10


RETRIED = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline, RetryPolicy
from shards import RangeShards
from stages import Derive

HERE = Path(__file__).parent


def flaky(frame):
    if (frame["id"] == 42).any():
        raise RuntimeError("partner API answered 503")
    return frame["id"] * 2


pipeline = Pipeline(
    name="retried", source=FileSource(str(HERE / "rows.csv")),
    stages=[Derive("double", flaky)], sink=ParquetSink(str(HERE / "out" / "retried")),
    key=["id"], shards=RangeShards("id", 2), batch_size=100,
    retry=RetryPolicy(max_retries=2, min_backoff_ms=50, max_backoff_ms=100, permanent=()),
)
'''


@pytest.mark.services
@pytest.mark.parametrize("cluster", ["rabbitmq"], indirect=True)
def test_a_worker_logs_a_batch_retried_then_dead_lettered_once(cluster: Cluster) -> None:
    # Given a worker, and a pipeline whose stage fails one batch on every attempt (retried
    # twice, then dead-lettered)
    work = cluster.workdir
    (work / "rows.csv").write_text("id\n" + "\n".join(str(i) for i in range(400)) + "\n")
    (work / "retried.py").write_text(RETRIED)
    worker = cluster.start_worker()
    # When the run is sent and followed to its end
    result = cluster.etl("run", "-p", "retried:pipeline", "--fresh", "--wait", "--no-progress",
                         timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    worker.terminate()
    worker.wait(timeout=60)
    # Then the worker's log has one WARNING line for that batch, with its cause, and no
    # traceback and no line per retry
    log = (work / "worker-0.log").read_text()
    about = [line for line in log.splitlines() if "partner API answered 503" in line]
    assert len(about) == 1, log
    assert " WARNING " in about[0] and "shard 0 batch 0 failed: " in about[0], about
    assert "Traceback" not in log
    # (after three attempts: the retries were made, each said at INFO only)
    errors = json.loads(cluster.etl("errors", "--json").stdout)
    assert [e["context"]["attempts"] for e in errors] == [3], errors
    # And the queue's numbers are one JSON document
    queues = json.loads(cluster.etl("queues", "--json").stdout)
    assert [q["dead"] for q in queues if q["queue"] == cluster.env["ETL_QUEUE"]] == [1]
