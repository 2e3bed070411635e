"""A followed distributed run of a file source is created by a worker, which parses the file
anyway; the sender only hashes it. Real workers on RabbitMQ, real processes."""

from __future__ import annotations

import sqlite3
import textwrap
import time

import pandas as pd

from tests.cluster import Cluster


def _orders_pipeline(cluster: Cluster, *, shard_column: str = "order_id") -> None:
    workdir = cluster.workdir
    lines = ["order_id,amount"] + [f"{i},{i * 1.5}" for i in range(3000)]
    (workdir / "orders.csv").write_text("\n".join(lines) + "\n")
    (workdir / "planned.py").write_text(textwrap.dedent(f"""
        import os
        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards

        HERE = os.path.dirname(os.path.abspath(__file__))
        orders = Pipeline(name="orders", source=FileSource(os.path.join(HERE, "orders.csv")),
                          sink=ParquetSink(os.path.join(HERE, "out", "orders")), key=["order_id"],
                          shards=HashShards([{shard_column!r}], 4), batch_size=400)
    """))


def _plan_statuses(cluster: Cluster, *, within: float = 10.0) -> list[str]:
    """The statuses recorded for plan requests, once none is open (or `within` s passed)."""
    deadline = time.monotonic() + within
    while True:
        with sqlite3.connect(cluster.workdir / ".etl" / "results.db") as conn:
            statuses = [status for (status,) in conn.execute(
                "SELECT status FROM JobResult WHERE json_extract(data, '$.function') = 'plan_run'")]
        if (statuses and all(s == "completed" for s in statuses)) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.1)


def test_a_followed_run_is_created_by_a_worker_and_loads_every_row(cluster: Cluster) -> None:
    # Given a worker and a user's pipeline over a CSV file
    _orders_pipeline(cluster)
    cluster.start_worker()
    # When a new run is started and followed
    done = cluster.etl("run", "-p", "planned:orders", "--fresh", "--wait", "--no-progress")
    # Then it completes with every order once, and it was the worker that created the run
    assert done.returncode == 0, done.stderr
    loaded = pd.read_parquet(cluster.workdir / "out" / "orders")
    assert sorted(loaded["order_id"]) == list(range(3000))
    with sqlite3.connect(cluster.workdir / ".etl" / "state.db") as conn:
        rows, planned_by = conn.execute("SELECT json_extract(params, '$.source_rows'), "
                                        "json_extract(params, '$.planned_by') FROM EtlRun").fetchone()
    assert rows == 3000
    worker_pid = cluster.workers[0].pid
    assert planned_by and f":{worker_pid}@" in planned_by
    # And the plan request is a job of the result store like the steps, ended by the worker
    # without waiting for a record that never comes (it used to hold the worker's thread
    # 5 s before its ack, and slowed the run it had just created)
    assert _plan_statuses(cluster) == ["completed"]
    assert "not written within" not in (cluster.workdir / "worker-0.log").read_text()
    # And following it again finds it complete without a new run
    again = cluster.etl("run", "-p", "planned:orders", "--wait", "--no-progress")
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(cluster.workdir / ".etl" / "state.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM EtlRun").fetchone()[0] == 1


def test_a_run_the_worker_cannot_create_is_one_line_from_the_sender(cluster: Cluster) -> None:
    # Given a pipeline whose shard column is not in its file, and a worker
    _orders_pipeline(cluster, shard_column="no_such_column")
    cluster.start_worker()
    # When a new run is started and followed
    failed = cluster.etl("run", "-p", "planned:orders", "--fresh", "--wait", "--no-progress",
                         timeout=120)
    # Then the sender exits with the worker's error in one line, no traceback
    assert failed.returncode == 2, failed.stderr
    assert "no_such_column" in failed.stderr and "Traceback" not in failed.stderr
