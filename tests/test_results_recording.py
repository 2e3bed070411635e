"""What a run leaves in the result store, and that a result-store outage never stops a run."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from etl.stores import Stores
from results import open_results
from results.models import JobResult
from tests.conftest import free_port, port_open
from tests.test_embedded import Poison, _pipeline, _run, _stores


def _recorded(tmp_path: Path, results) -> Stores:  # type: ignore[no-untyped-def]
    stores = _stores(tmp_path)
    stores.results = results
    return stores


def test_every_message_of_a_run_has_a_completed_record(tmp_path: Path) -> None:
    # Given a run of 5,000 rows in batches of 300 over 6 shards, recorded in SQLite
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    pipeline = _pipeline(tmp_path)
    stores = _recorded(tmp_path, results)
    # When it runs (two worker processes)
    outcome = _run(stores, pipeline, threads=2, processes=2)
    assert outcome.completed
    # Then every fetch, clean and load message has a completed record with its rows
    jobs = results.list(run_id=outcome.run_id, limit=10_000)
    steps = [j for j in jobs if j.function.startswith("etl_")]
    batches = len(stores.state.list_payloads(outcome.run_id))
    assert len(steps) == 3 * batches
    assert {j.status for j in steps} == {"completed"}
    loaded = sum(j.result["rows"] for j in steps if j.function == "etl_load")
    assert loaded == sum(c.rows_loaded for c in stores.state.list_checkpoints(outcome.run_id))
    for job in steps:
        assert [t.status for t in job.history] == ["pending", "queued", "in_progress", "completed"]
        assert job.duration is not None and job.worker_id and job.stage == job.function[4:]
    # And the run itself has a record, completed, with its totals and full progress
    run = results.get(outcome.run_id)
    assert run is not None and run.function == "etl.run" and run.status == "completed"
    assert run.progress == 1.0 and run.result["rows_loaded"] == loaded


def test_poison_batch_leaves_a_failed_record_and_retries_are_recorded(tmp_path: Path) -> None:
    # Given a stage that raises on one batch, and a sink that fails each first write
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    pipeline = _pipeline(tmp_path, stages=[Poison(1234)])
    calls: dict[tuple[int, int], int] = {}
    original = pipeline.sink.write_parquet

    def flaky(data, *, run_id, shard, batch):  # type: ignore[no-untyped-def]
        calls[(shard, batch)] = calls.get((shard, batch), 0) + 1
        if calls[(shard, batch)] == 1:
            raise ConnectionError("sink not reachable")
        return original(data, run_id=run_id, shard=shard, batch=batch)

    pipeline.sink.write_parquet = flaky  # type: ignore[method-assign]
    # When the run is worked
    outcome = _run(_recorded(tmp_path, results), pipeline)
    assert not outcome.completed
    # Then the poison batch's clean is failed with its error type and message
    failed = results.list(run_id=outcome.run_id, status="failed", limit=100)
    cleans = [j for j in failed if j.function == "etl_clean"]
    assert len(cleans) == 1
    assert cleans[0].error_type == "BatchError" and "poisoned row 1234" in cleans[0].error
    # And each load went through retrying -> queued -> in_progress -> completed
    loads = [j for j in results.list(run_id=outcome.run_id, limit=10_000) if j.function == "etl_load"]
    assert loads and all(j.status == "completed" for j in loads)
    assert [t.status for t in loads[0].history] == [
        "pending", "queued", "in_progress", "retrying", "queued", "in_progress", "completed"]
    assert loads[0].error_type == "ConnectionError" and loads[0].retry_count == 1
    # And the run's own record says it failed
    assert results.get(outcome.run_id).status == "failed"  # type: ignore[union-attr]


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A redis-server of this test's own on a free port, so it can be killed."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server binary not installed")
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if port_open("127.0.0.1", port):
            break
        time.sleep(0.05)
    yield process, f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


def test_a_redis_outage_during_a_run_does_not_stop_it(tmp_path: Path, own_redis, caplog) -> None:  # type: ignore[no-untyped-def]
    # Given results recorded in a Redis server that dies in the middle of the run
    process, url = own_redis
    results = open_results(url)
    results.store(JobResult(job_id="probe", function="probe"))
    assert results.get("probe") is not None
    pipeline = _pipeline(tmp_path, rows=20_000)
    pipeline = replace(pipeline, batch_size=200)
    stores, run_id = _recorded(tmp_path, results), "redis-outage"

    def kill_when_started() -> None:
        while not stores.state.list_payloads(run_id):
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    # When the run is worked
    with caplog.at_level(logging.WARNING, logger="results"):
        result = _run(stores, pipeline, run_id=run_id)
    killer.join()
    # Then it completes with every row loaded once, and the outage was logged, not raised
    assert process.wait(5) == -signal.SIGKILL
    assert result.completed and result.dead_letters == 0
    expected = [i for i in range(20_000) if not (i % 2 == 1 and i % 7 == 0)]
    assert sorted(pipeline.sink.read_all()["id"].tolist()) == expected
    assert any("result store" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


def test_results_cli(tmp_path: Path) -> None:
    # Given a finished run recorded in the default SQLite result store
    from tests.test_cli import _orders, _user_pipeline, etl

    _orders(tmp_path)
    _user_pipeline(tmp_path)
    assert etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress").returncode == 0
    import json

    status = json.loads(etl(tmp_path, "status", "--json").stdout)
    run_id, batches = status["run"]["run_id"], status["totals"]["batches_fetched"]
    # When its tasks are listed, one is shown, stats and cleanup are asked for
    listed = json.loads(etl(tmp_path, "results", "list", "--run", run_id, "--status", "completed",
                            "--limit", "500", "--json").stdout)
    shown = etl(tmp_path, "results", "get", listed[0]["job_id"])
    stats = etl(tmp_path, "results", "stats", "--json")
    # Then they answer from the store
    assert len(listed) == 3 * batches + 1  # fetch, clean and load of each batch, plus the run
    assert all(j["status"] == "completed" for j in listed)
    assert "in_progress" in shown.stdout and "completed" in shown.stdout
    assert json.loads(stats.stdout)["by_status"] == {"completed": 3 * batches + 1}
    assert "removed 0 expired" in etl(tmp_path, "results", "cleanup").stdout
    missing = etl(tmp_path, "results", "get", "nope")
    assert missing.returncode == 2 and "job 'nope' not found" in missing.stderr


def test_records_live_as_long_as_results_ttl_says_and_a_job_may_say_otherwise(
        tmp_path: Path) -> None:
    import dramatiq
    from datetime import timedelta
    from dramatiq.brokers.stub import StubBroker

    from results.middleware import ResultRecorder
    from results.models import utcnow

    # Given a broker recording results for an hour, and two actors: one plain, one keeping
    # its records for 60 s
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    broker = StubBroker()
    recorder = ResultRecorder(results, ttl=timedelta(hours=1))
    broker.add_middleware(recorder)

    @dramatiq.actor(broker=broker, actor_name="plain")
    def plain() -> None: ...

    @dramatiq.actor(broker=broker, actor_name="brief", results_ttl=60)
    def brief() -> None: ...

    # When each is sent, and the plain one once more with its own option of 5 s
    sent = {"plain": plain.send(), "brief": brief.send(),
            "own": plain.send_with_options(results_ttl=5)}
    recorder.flush()
    # Then each record expires when its setting says
    expected = {"plain": 3600, "brief": 60, "own": 5}
    for name, message in sent.items():
        left = (results.get(message.message_id).expires_at - utcnow()).total_seconds()
        assert expected[name] * 0.5 < left <= expected[name], (name, left)
    broker.close()
