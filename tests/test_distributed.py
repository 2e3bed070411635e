"""Distributed mode on the real brokers: `etl worker` processes SIGKILLed and restarted,
RabbitMQ stopped and started, a poison batch dead-lettered and re-driven, lost messages
re-sent by the reconciler. The sink must end with every key exactly once.

Each test uses a queue of its own on the shared RabbitMQ / Redis, and a working directory of
its own for the SQLite state, the local object store and the Parquet sink, which every
process of the test shares.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster import ETL, RABBITMQ, Cluster
from tests.conftest import port_open
from tests.flights import assert_exactly_once, sink_frame

pytestmark = [pytest.mark.slow, pytest.mark.services]

def _flights_state(workdir: Path) -> tuple[int, int, int]:
    with sqlite3.connect(workdir / ".etl" / "state.db") as conn:
        return conn.execute("SELECT SUM(rows_fetched), SUM(rows_loaded), SUM(rows_quarantined) "
                            "FROM TaskCheckpoint").fetchone()


@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_workers_sigkilled_at_random_lose_and_duplicate_nothing(
        cluster: Cluster, reference: pd.DataFrame) -> None:
    # Given two worker processes and the demo run (336,776 rows, 20 shards) enqueued
    cluster.start_worker()
    cluster.start_worker()
    run_id = cluster.enqueue("--shards", "20", "--batch-size", "2500")
    # When a driver SIGKILLs a random worker every 0.5-2 s and starts a new one in its place
    rng = random.Random(20261123)
    kills = 0
    while kills < 6 and not cluster.complete(run_id):
        time.sleep(rng.uniform(0.5, 2.0))
        victim = rng.randrange(2)
        process = cluster.workers[-2:][victim]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills += 1
        cluster.start_worker()
    assert kills >= 3, "the run finished before the driver could kill three workers"
    # And the run is followed to its end
    final = cluster.etl("run", "--run-id", run_id, "--wait", "--no-progress", timeout=400)
    # Then it completed, and the sink holds every key of the pandas reference exactly once
    assert final.returncode == 0, final.stderr
    assert "completed" in final.stdout
    assert_exactly_once(sink_frame(cluster.workdir), reference)
    fetched, loaded, quarantined = _flights_state(cluster.workdir)
    assert (fetched, loaded) == (336_776, len(reference))
    assert fetched == loaded + quarantined
    # And no task record is left open: a killed worker's messages ended completed, through
    # their redelivery or, where the worker died between its ack and its write, the settle
    from etl.stores import open_results

    results = open_results(f"sqlite:///{cluster.workdir}/.etl/results.db")
    records = results.list(run_id=run_id, limit=100_000)
    assert len(records) > 3 * 20
    assert {r.job_id: r.status for r in records if r.status != "completed"} == {}


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def _can_restart_rabbitmq() -> None:
    import shutil

    from tests.conftest import service_missing

    if shutil.which("rabbitmqctl") is None:
        service_missing("rabbitmqctl", "the broker restart test stops and starts RabbitMQ with it")


@pytest.mark.exclusive  # stops RabbitMQ: nothing else may run meanwhile (see Makefile test)
def test_rabbitmq_stopped_and_started_mid_run_loses_nothing(
        cluster: Cluster, reference: pd.DataFrame) -> None:
    # Given two workers working the demo run on RabbitMQ
    _can_restart_rabbitmq()
    cluster.start_worker()
    cluster.start_worker()
    run_id = cluster.enqueue("--shards", "20", "--batch-size", "2500")
    deadline = time.monotonic() + 120
    while cluster.rows_loaded() < 30_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cluster.complete(run_id), "the run ended before the broker could be stopped"
    # When RabbitMQ stops mid-run and starts again 3 s later
    try:
        _rabbitmqctl("stop_app")
        time.sleep(3)
    finally:
        _rabbitmqctl("start_app")
    for _ in range(60):
        if port_open("127.0.0.1", 5672):
            break
        time.sleep(1)
    # Then the workers reconnect and the run finishes with every key exactly once
    final = cluster.etl("run", "--run-id", run_id, "--wait", "--no-progress", timeout=400)
    assert final.returncode == 0, final.stderr
    assert_exactly_once(sink_frame(cluster.workdir), reference)


POISON_PIPELINE = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from etl.core.errors import ConfigError
from etl.pipeline import RetryPolicy
from shards import RangeShards
from stages import Derive

HERE = Path(__file__).parent


def explode_on_poison(frame):
    if (HERE / "poison.flag").exists() and (frame["id"] == 4242).any():
        raise RuntimeError("poisoned row 4242")
    return frame["id"] * 2


pipeline = Pipeline(
    name="poisoned",
    source=FileSource(str(HERE / "rows.csv")),
    stages=[Derive("double", explode_on_poison)],
    sink=ParquetSink(str(HERE / "out" / "poisoned")),
    key=["id"],
    shards=RangeShards("id", 4),
    batch_size=1000,
    retry=RetryPolicy(max_retries=2, min_backoff_ms=50, max_backoff_ms=200,
                      permanent=(ConfigError,)),
)
'''


@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_poison_batch_is_dead_lettered_after_retries_and_redriven_after_the_fix(
        cluster: Cluster) -> None:
    # Given a pipeline whose stage raises on the batch holding row 4242, and a worker
    work = cluster.workdir
    pd.DataFrame({"id": range(10_000), "name": [f"n{i}" for i in range(10_000)]}).to_csv(
        work / "rows.csv", index=False)
    (work / "poisoned.py").write_text(POISON_PIPELINE)
    (work / "poison.flag").touch()
    cluster.start_worker()
    # When the run is sent and followed
    first = cluster.etl("run", "-p", "poisoned:pipeline", "--fresh", "--wait", "--no-progress",
                        timeout=300)
    # Then it ends unfinished (exit 1) with that batch in the dead-letter queue after 2 retries,
    assert first.returncode == 1, first.stdout + first.stderr
    run_id = first.stdout.split("run ", 1)[1].split(":", 1)[0].strip()
    listed = cluster.etl("dlq", "list", "--run", run_id)
    assert listed.returncode == 0, listed.stderr
    assert "etl_clean" in listed.stdout and "poisoned row 4242" in listed.stdout
    assert "dead letters of" in listed.stdout and ": 1" in listed.stdout
    depth = cluster.etl("queues")
    assert depth.returncode == 0, depth.stderr
    row = [line for line in depth.stdout.splitlines() if line.startswith("│")][0]
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells[0] == cluster.env["ETL_QUEUE"]
    assert cells[1] == "0" and cells[4] == "1" and int(cells[5]) >= 1  # ready, dead, consumers
    # in TaskErrorLog with its traceback and retry count, while the other shards finished
    errors = cluster.etl("errors", "--traceback")
    assert "poisoned row 4242" in errors.stdout and "Traceback" in errors.stdout
    with sqlite3.connect(work / ".etl" / "state.db") as conn:
        context = conn.execute("SELECT context FROM TaskErrorLog").fetchall()
        done = conn.execute("SELECT COUNT(*) FROM TaskCheckpoint WHERE status = 'done'").fetchone()[0]
    assert len(context) == 1
    assert json.loads(context[0][0])["retries"] == 2 and json.loads(context[0][0])["attempts"] == 3
    assert done == 3
    # When the cause is fixed and the dead letter re-driven
    (work / "poison.flag").unlink()
    retried = cluster.etl("dlq", "retry", "--run", run_id)
    assert retried.returncode == 0 and "re-drove 1 message" in retried.stdout, retried.stderr
    final = cluster.etl("run", "--run-id", run_id, "-p", "poisoned:pipeline", "--wait",
                        "--no-progress", timeout=300)
    # Then the run completes with every row loaded exactly once, and the dead-letter queue is empty
    assert final.returncode == 0, final.stderr
    files = sorted((work / "out" / "poisoned").glob("*.parquet"))
    loaded = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert len(loaded) == 10_000 and not loaded["id"].duplicated().any()
    assert (loaded["double"] == loaded["id"] * 2).all()
    assert "dead letters of" in cluster.etl("dlq", "list").stdout
    assert cluster.etl("dlq", "list", "--run", run_id).stdout.count("etl_clean") == 0
    # And the result store keeps the failed delivery and a completed record of the re-driven one
    records = json.loads(cluster.etl("results", "list", "--run", run_id, "--json", "--limit", "500").stdout)
    cleans = [r for r in records if r["function"] == "etl_clean" and r["args"][1:] == [1, 1]]
    assert sorted(r["status"] for r in cleans) == ["completed", "failed"], cleans


QUEUED_PIPELINE = '''
import os
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards

HERE = Path(__file__).parent


def pipeline(queue=None):
    name = "urgent" if queue else "plain"
    return Pipeline(name=name, source=FileSource(str(HERE / "rows.csv")),
                    sink=ParquetSink(str(HERE / "out" / name)), key=["id"],
                    shards=RangeShards("id", 4), batch_size=1000, queue=queue)


def urgent():
    return pipeline(os.environ["ETL_QUEUE"] + "-urgent")
'''


@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_a_pipeline_with_its_own_queue_is_worked_only_where_that_queue_is_named(
        cluster: Cluster) -> None:
    # Given a pipeline whose messages go to a queue of its own, and a worker on the default queue
    work = cluster.workdir
    pd.DataFrame({"id": range(10_000)}).to_csv(work / "rows.csv", index=False)
    (work / "queued.py").write_text(QUEUED_PIPELINE)
    default, urgent = cluster.env["ETL_QUEUE"], cluster.env["ETL_QUEUE"] + "-urgent"
    cluster.queues.append(urgent)
    cluster.start_worker()
    # When the urgent run is sent, and a plain run after it is followed to its end
    sent = cluster.etl("run", "-p", "queued:urgent", "--fresh", "--no-progress")
    assert sent.returncode == 0 and f"queue {urgent}" in sent.stderr, sent.stderr
    urgent_run = sent.stdout.strip().splitlines()[-1]
    plain = cluster.etl("run", "-p", "queued:pipeline", "--fresh", "--wait", "--no-progress")
    assert plain.returncode == 0 and "completed" in plain.stdout, plain.stderr
    # Then the default worker did the plain run but left the urgent one on its own queue
    assert not cluster.complete(urgent_run)
    assert not (work / "out" / "urgent").exists()
    depth = cluster.etl("queues", "--queue", default, "--queue", urgent)
    assert depth.returncode == 0, depth.stderr
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip("│").split("│")]
        for line in depth.stdout.splitlines() if line.startswith("│"))}
    assert rows[default][0] == "0" and rows[urgent][0] == "4", depth.stdout  # ready
    # And `etl queues` alone finds the urgent queue through the runs' pipelines
    assert all(f"│ {name} " in cluster.etl("queues").stdout for name in (default, urgent))
    # When a worker for the urgent queue joins
    cluster.start_worker("--queue", urgent)
    final = cluster.etl("run", "--run-id", urgent_run, "-p", "queued:urgent", "--wait",
                        "--no-progress", timeout=300)
    # Then the urgent run completes, every row once, and its dead letters are looked up there
    assert final.returncode == 0 and "completed" in final.stdout, final.stderr
    loaded = pd.concat([pd.read_parquet(f) for f in (work / "out" / "urgent").glob("*.parquet")])
    assert sorted(loaded["id"]) == list(range(10_000))
    assert f"dead letters of {urgent}: 0" in cluster.etl("dlq", "list", "--run", urgent_run).stdout


def _queued_jobs(cluster: Cluster, run_id: str) -> set[str]:
    """The job ids of the run's steps whose result record says queued."""
    listed = cluster.etl("results", "list", "--run", run_id, "--status", "queued", "--json",
                         "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    return {record["job_id"] for record in json.loads(listed.stdout)}


def test_reconcile_resends_exactly_the_lost_work(cluster: Cluster, reference: pd.DataFrame) -> None:
    # Given a run enqueued while no worker runs, and then its messages lost (queue purged)
    run_id = cluster.enqueue("--shards", "20", "--batch-size", "20000")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=RABBITMQ)
    broker.flush(cluster.env["ETL_QUEUE"])
    broker.close()
    # When the reconciler looks at the run
    dry = cluster.etl("reconcile", run_id, "--dry-run")
    # Then it finds all 20 shards' fetch missing, and sends them
    assert "would send 20," in dry.stdout, dry.stdout + dry.stderr
    before = _queued_jobs(cluster, run_id)
    sent = cluster.etl("reconcile", run_id)
    assert "sent 20," in sent.stdout, sent.stderr
    # And each step it sent is recorded as queued, as a step `etl run` sends is (a worker
    # finding no record of a step it starts could not record the step's life)
    assert len(_queued_jobs(cluster, run_id) - before) == 20
    # And a second pass sends nothing while those messages wait in the queue
    again = cluster.etl("reconcile", run_id)
    assert "sent 0," in again.stdout and "probably queued 20" in again.stdout, again.stdout
    # When a worker starts, Then the run completes exactly once
    cluster.start_worker()
    final = cluster.etl("run", "--run-id", run_id, "--wait", "--no-progress", timeout=300)
    assert final.returncode == 0, final.stderr
    assert_exactly_once(sink_frame(cluster.workdir), reference)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


def test_worker_supervisor_restarts_a_killed_process_and_stops_on_sigterm(cluster: Cluster) -> None:
    # Given `etl worker --processes 2`
    supervisor = subprocess.Popen([*ETL, "worker", "--processes", "2", "--threads", "1"],
                                  cwd=cluster.workdir, env=cluster.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cluster.workers.append(supervisor)
    deadline = time.monotonic() + 30
    while len(_children(supervisor.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    first = _children(supervisor.pid)
    assert len(first) == 2
    # When one worker process is SIGKILLed
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    # Then the supervisor starts another in its place
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _children(supervisor.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and victim not in now and (now & first)
    # When the supervisor gets SIGTERM, Then it stops its workers and exits
    supervisor.send_signal(signal.SIGTERM)
    output, _ = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 0, output
    assert "restarting it" in output
    for pid in now:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_a_deleted_queue_holds_nothing_any_more(cluster: Cluster) -> None:
    from etl.brokers import open_broker, queues_of

    # Given a run enqueued with no worker: its first batches wait on the queue
    cluster.enqueue("--shards", "4", "--batch-size", "100000")
    broker = open_broker(cluster.env["ETL_BROKER_URL"])
    queues = queues_of(broker)
    try:
        queue = cluster.env["ETL_QUEUE"]
        assert queues.counts(queue).ready == 4
        # When the queue is deleted
        queues.delete(queue)
        # Then it holds nothing: no ready, delayed or dead messages
        counts = queues.counts(queue)
        assert (counts.ready, counts.delayed, counts.dead) == (0, 0, 0)
    finally:
        queues.close()
        broker.close()


@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_dlq_purge_drops_only_the_matching_dead_letters(cluster: Cluster) -> None:
    import dramatiq

    from etl.brokers import open_broker, queues_of

    # Given two dead letters of two runs in the cluster's queue
    queue = cluster.env["ETL_QUEUE"]
    broker = open_broker(cluster.env["ETL_BROKER_URL"])

    def etl_load(run_id: str, shard: int, batch: int) -> None:
        raise RuntimeError(f"boom {run_id}")

    actor = dramatiq.actor(etl_load, broker=broker, queue_name=queue, max_retries=0)
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1)
    worker.start()
    try:
        actor.send("run-a", 0, 0)
        actor.send("run-b", 0, 0)
        queues = queues_of(broker)
        deadline = time.monotonic() + 30
        while queues.counts(queue).dead < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
    assert queues.counts(queue).dead == 2
    broker.close()
    # When one run's dead letters are purged, Then only that one goes
    purged = cluster.etl("dlq", "purge", "--run", "run-a", "--yes")
    assert purged.returncode == 0 and "dropped 1 dead letter" in purged.stdout, purged.stderr
    left = cluster.etl("dlq", "list")
    assert "run-b" in left.stdout and "run-a" not in left.stdout
    # And without a filter, after confirming, the rest goes
    asked = subprocess.run([*ETL, "dlq", "purge"], cwd=cluster.workdir, env=cluster.env,
                           input="y\n", text=True, capture_output=True, timeout=60)
    assert asked.returncode == 0 and "dropped 1 dead letter" in asked.stdout, asked.stderr
    assert cluster.etl("dlq", "list").stdout.count("run-b") == 0


def test_two_concurrent_backfills_on_the_broker_load_the_window_once(cluster: Cluster) -> None:
    # Given two workers, and two triggers of the same window at the same moment (cron twice)
    from tests.test_backfill import END, START, _window_reference

    cluster.start_worker()
    cluster.start_worker()
    args = [*ETL, "backfill", "--start", START, "--end", END, "--shards", "8", "--batch-size",
            "3000", "--wait", "--no-progress"]
    triggers = [subprocess.Popen(args, cwd=cluster.workdir, env=cluster.env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [t.communicate(timeout=300) for t in triggers]
    # Then both follow the same run to completion
    assert [t.returncode for t in triggers] == [0, 0], outs
    assert all("completed" in out for out, _ in outs), outs
    # And the window's rows are in the sink exactly once
    assert_exactly_once(sink_frame(cluster.workdir), _window_reference())
    # When cron triggers the window once more after it finished
    late = subprocess.run(args, cwd=cluster.workdir, env=cluster.env, text=True,
                          capture_output=True, timeout=120)
    # Then the late follower is told the run completed, and nothing was loaded again
    assert late.returncode == 0, late.stderr
    assert "completed" in late.stdout and "already complete" in late.stderr
    assert re.search(r"loaded by this invocation\s*│\s*0\s", late.stdout), late.stdout
    assert_exactly_once(sink_frame(cluster.workdir), _window_reference())


def test_workers_share_an_s3_object_store(cluster: Cluster, s3_bucket: str, s3_endpoint: str,
                                          reference: pd.DataFrame) -> None:
    import boto3

    from etl.core.names import staged_key

    # Given raw payloads and staged batches kept on S3 (moto's server), and two workers
    cluster.env.update(ETL_OBJECTS_URL=f"s3://{s3_bucket}/etl", ETL_S3_ENDPOINT_URL=s3_endpoint,
                       AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                       AWS_DEFAULT_REGION="us-east-1")
    cluster.start_worker()
    cluster.start_worker()
    # When the demo runs on them
    done = cluster.etl("run", "--shards", "6", "--batch-size", "30000", "--fresh", "--wait",
                       "--no-progress")
    # Then it completes exactly once, every batch's staged (cleaned) batch in the bucket under
    # its key, for the load on whichever worker took it (the demo's raw batches are pointers
    # into its file: etl.runtime.raw)
    assert done.returncode == 0, done.stderr
    assert_exactly_once(sink_frame(cluster.workdir), reference)
    with sqlite3.connect(cluster.workdir / ".etl" / "state.db") as conn:
        keys = {staged_key(*row) for row in conn.execute("SELECT run_id, shard, batch FROM RawPayload")}
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="etl/")
    stored = {o["Key"].removeprefix("etl/") for o in listed.get("Contents", [])}
    assert keys and keys <= stored


def test_the_sender_of_a_followed_run_imports_neither_numpy_nor_pyarrow(cluster: Cluster) -> None:
    # Given a worker on the cluster's queue
    cluster.start_worker()
    # When `etl run --wait` sends the demo and follows it (a worker plans the run: the
    # sender parses nothing), with the sender's modules read as it exits
    code = textwrap.dedent("""
        import atexit, sys
        atexit.register(lambda: print("heavy imports:", sorted(
            m for m in ("numpy", "pyarrow", "pandas") if m in sys.modules)))
        sys.argv = ["etl", "run", "--shards", "4", "--fresh", "--wait", "--no-progress"]
        from cli.main import entry
        entry()
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=cluster.workdir, env=cluster.env,
                          text=True, capture_output=True, timeout=300)
    # Then the run completed, and the sender imported none of numpy, pyarrow and pandas
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert "heavy imports: []" in done.stdout, done.stdout
