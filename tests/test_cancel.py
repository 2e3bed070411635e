"""Run control: `etl cancel` of an embedded `etl run` and of a distributed run worked by real
`etl worker`s (RabbitMQ and Redis), `--resume` afterwards loading every row exactly once,
and `etl queues purge --run` removing one run's pending messages and no other's.

Every test works in a directory of its own (SQLite state and results, local objects, a
Parquet sink) and, on a broker, a queue of its own (tests.cluster).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster import ETL, Cluster, broker_url
from tests.watch import rows_loaded

pytestmark = [pytest.mark.slow]

ROWS = 30_000

#: 60 batches of 500 rows in 4 shards; each clean sleeps, so a run lasts long enough to be
#: cancelled in the middle.
SLOW_PIPELINE = '''
import time
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards
from stages import Derive

HERE = Path(__file__).parent


def slow_double(frame):
    time.sleep(0.25)
    return frame["id"] * 2


pipeline = Pipeline(
    name="slow",
    source=FileSource(str(HERE / "rows.csv")),
    stages=[Derive("double", slow_double)],
    sink=ParquetSink(str(HERE / "out" / "slow")),
    key=["id"],
    shards=RangeShards("id", 4),
    batch_size=500,
)
'''


def _project(workdir: Path) -> None:
    pd.DataFrame({"id": range(ROWS), "name": [f"n{i}" for i in range(ROWS)]}).to_csv(
        workdir / "rows.csv", index=False)
    (workdir / "slowpipes.py").write_text(SLOW_PIPELINE)


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), os.getcwd()])
    return env


def _etl(workdir: Path, env: dict[str, str], *args: str,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ETL, *args], cwd=workdir, env=env, text=True, capture_output=True,
                          timeout=timeout)


def _query(workdir: Path, sql: str, *args: object, db: str = "state.db") -> list[tuple]:
    with sqlite3.connect(workdir / ".etl" / db, timeout=10) as conn:
        return conn.execute(sql, args).fetchall()


def _run_status(workdir: Path, run_id: str) -> str:
    return _query(workdir, "SELECT status FROM EtlRun WHERE run_id = ?", run_id)[0][0]


def _held_leases(workdir: Path) -> int:
    return _query(workdir, "SELECT COUNT(*) FROM PendingTasks WHERE taken_by IS NOT NULL")[0][0]


def _record_statuses(workdir: Path, run_id: str) -> dict[str, str]:
    """Job id -> status of the run's task records in the SQLite result store."""
    from results import open_results

    store = open_results(f"sqlite:///{workdir / '.etl' / 'results.db'}")
    try:
        return {job.job_id: job.status for job in store.list(run_id=run_id, limit=100_000)}
    finally:
        store.close()


def _sink_ids(workdir: Path) -> pd.Series:
    return pd.read_parquet(workdir / "out" / "slow")["id"]


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _assert_loaded_once(workdir: Path) -> None:
    ids = _sink_ids(workdir)
    assert len(ids) == ROWS
    assert ids.is_unique
    assert set(ids) == set(range(ROWS))


def test_cancel_stops_an_embedded_run_and_resume_loads_every_row_once(tmp_path: Path) -> None:
    # Given an embedded `etl run` working a slow run in two worker processes
    _project(tmp_path)
    env = _env(tmp_path)
    run_id = "slow-cancel-embedded"
    running = subprocess.Popen([*ETL, "run", "-p", "slowpipes:pipeline", "--run-id", run_id,
                                "--processes", "2", "--no-progress"], cwd=tmp_path, env=env,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: rows_loaded(tmp_path, run_id) > 0, 120, "the first rows loaded")
        # When another process cancels the run
        cancel = _etl(tmp_path, env, "cancel", run_id)
        cancelled_at = time.monotonic()
        # Then the command says so, and the running `etl run` stops promptly, exit 4, with
        # one clear line
        assert cancel.returncode == 0, cancel.stderr
        assert f"cancelled run {run_id}" in cancel.stdout
        _stdout, stderr = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert time.monotonic() - cancelled_at < 15
    assert running.returncode == 4, stderr[-2000:]
    assert f"run {run_id} cancelled" in stderr and "--resume" in stderr
    # And the run is cancelled part way, with no lease left held
    assert _run_status(tmp_path, run_id) == "cancelled"
    loaded = rows_loaded(tmp_path, run_id)
    assert 0 < loaded < ROWS
    assert _held_leases(tmp_path) == 0
    # And no batch was cut in half: the sink holds exactly the rows the checkpoints count
    assert len(_sink_ids(tmp_path)) == loaded and _sink_ids(tmp_path).is_unique
    # And its task records are settled: the run's own record and the steps acked without
    # work end cancelled, none is left queued or in progress
    records = _record_statuses(tmp_path, run_id)
    assert records[run_id] == "cancelled"
    assert not {"queued", "in_progress"} & set(records.values()), records
    # When the run is asked for again without --resume
    again = _etl(tmp_path, env, "run", "-p", "slowpipes:pipeline", "--run-id", run_id,
                 "--no-progress")
    # Then it is refused in one line, exit 4, and nothing more is loaded
    assert again.returncode == 4
    assert again.stderr.strip().count("\n") == 0 and "cancelled" in again.stderr
    assert rows_loaded(tmp_path, run_id) == loaded
    # When it is resumed
    resumed = _etl(tmp_path, env, "run", "-p", "slowpipes:pipeline", "--run-id", run_id,
                   "--resume", "--processes", "2", "--no-progress")
    # Then it completes, and the sink holds every row exactly once
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _run_status(tmp_path, run_id) == "completed"
    _assert_loaded_once(tmp_path)


@pytest.mark.services
@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_cancel_of_a_distributed_run_acks_its_messages_and_resume_completes_it(
        tmp_path: Path, kind: str) -> None:
    # Given two `etl worker`s working a slow run on a queue of this test's own
    _project(tmp_path)
    cluster = Cluster(tmp_path, broker_url(kind))
    try:
        cluster.start_worker()
        cluster.start_worker()
        run_id = cluster.enqueue("-p", "slowpipes:pipeline")
        said = tmp_path / "follower.err"
        with open(said, "w") as stderr:
            follower = subprocess.Popen([*ETL, "run", "-p", "slowpipes:pipeline", "--run-id",
                                         run_id, "--wait", "--no-progress"], cwd=tmp_path,
                                        env=cluster.env, text=True, stdout=subprocess.DEVNULL,
                                        stderr=stderr)
        _wait_for(lambda: "resuming run" in said.read_text(), 60, "the follower to follow")
        _wait_for(lambda: rows_loaded(tmp_path, run_id) > 0, 120, "the first rows loaded")
        # When the run is cancelled
        cancel = cluster.etl("cancel", run_id)
        assert cancel.returncode == 0, cancel.stderr
        # Then the `etl run --wait` following it stops with one line, exit 4
        try:
            follower.wait(timeout=30)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        followed = said.read_text()
        assert follower.returncode == 4, followed[-2000:]
        assert f"run {run_id} cancelled" in followed
        # Then the workers stop loading it within a few seconds, and its queue drains
        # (each message acked without work), with no lease left held
        _wait_for(lambda: _settled(cluster), 60, "the queue to drain")
        loaded = rows_loaded(tmp_path, run_id)
        time.sleep(3)
        assert rows_loaded(tmp_path, run_id) == loaded
        assert 0 < loaded < ROWS
        assert _run_status(tmp_path, run_id) == "cancelled"
        assert _held_leases(tmp_path) == 0
        assert len(_sink_ids(tmp_path)) == loaded and _sink_ids(tmp_path).is_unique
        # And its steps' records are cancelled or completed, none left queued or running
        records = _record_statuses(tmp_path, run_id)
        assert "cancelled" in records.values()
        assert set(records.values()) <= {"cancelled", "completed"}, records
        # When the run is resumed and followed
        resumed = cluster.etl("run", "-p", "slowpipes:pipeline", "--run-id", run_id,
                              "--resume", "--wait", "--no-progress", timeout=300)
        # Then it completes with every row in the sink exactly once
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert cluster.complete(run_id)
        _assert_loaded_once(tmp_path)
    finally:
        cluster.stop()


def _settled(cluster: Cluster) -> bool:
    """The cluster's queue holds nothing (ready, delayed or unacked) and no lease is held."""
    from etl.brokers import open_broker, queues_of

    broker = open_broker(cluster.env["ETL_BROKER_URL"])
    queues = queues_of(broker)
    try:
        counts = queues.counts(cluster.env["ETL_QUEUE"])
    finally:
        queues.close()
        broker.close()
    return counts.outstanding == 0 and _held_leases(cluster.workdir) == 0


@pytest.mark.services
@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_purge_removes_one_runs_pending_messages_and_leaves_the_others(
        tmp_path: Path, kind: str) -> None:
    # Given two runs enqueued on the same queue, no worker running
    _project(tmp_path)
    cluster = Cluster(tmp_path, broker_url(kind))
    try:
        first = cluster.enqueue("-p", "slowpipes:pipeline")
        second = cluster.enqueue("-p", "slowpipes:pipeline")
        # When the first run's messages are purged
        purged = cluster.etl("queues", "purge", "--run", first)
        # Then its four pending fetches are gone and their records are cancelled
        assert purged.returncode == 0, purged.stderr
        assert f"purged 4 pending message(s) of run {first}" in purged.stdout
        assert set(_record_statuses(tmp_path, first).values()) == {"cancelled"}
        assert set(_record_statuses(tmp_path, second).values()) == {"queued"}
        # And a third run cancelled with --purge loses its pending messages at once too
        third = cluster.enqueue("-p", "slowpipes:pipeline")
        cancelled = cluster.etl("cancel", third, "--purge")
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"purged 4 pending message(s) of run {third}" in cancelled.stdout
        assert _run_status(tmp_path, third) == "cancelled"
        # And a burst worker then loads the second run in full and nothing of the others
        burst = cluster.etl("worker", "--burst", timeout=240)
        assert burst.returncode == 0, burst.stderr[-2000:]
        assert cluster.complete(second)
        assert rows_loaded(tmp_path, second) == ROWS
        assert rows_loaded(tmp_path, first) == rows_loaded(tmp_path, third) == 0
        # And purging again finds nothing of the first run
        again = cluster.etl("queues", "purge", "--run", first)
        assert again.returncode == 0 and "purged 0" in again.stdout
    finally:
        cluster.stop()


def test_purge_without_a_broker_is_one_line_exit_2(tmp_path: Path) -> None:
    # Given the embedded default broker
    env = _env(tmp_path)
    # When a purge is asked for
    result = _etl(tmp_path, env, "queues", "purge", "--run", "whatever")
    # Then it is refused in one line, exit 2
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "stub://" in result.stderr


def test_cancel_of_an_unknown_or_completed_run_is_one_line_exit_2(tmp_path: Path) -> None:
    # Given a small run that completed
    _project(tmp_path)
    env = _env(tmp_path)
    (tmp_path / "rows.csv").write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(50)))
    (tmp_path / "slowpipes.py").write_text(SLOW_PIPELINE.replace("time.sleep(0.25)", "pass"))
    done = _etl(tmp_path, env, "run", "-p", "slowpipes:pipeline", "--run-id", "small",
                "--no-progress")
    assert done.returncode == 0, done.stderr
    # When it, and a run that does not exist, are cancelled
    completed = _etl(tmp_path, env, "cancel", "small")
    unknown = _etl(tmp_path, env, "cancel", "nope")
    # Then each is refused in one line, exit 2, and the completed run stays completed
    for result, words in ((completed, "completed"), (unknown, "not found")):
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0 and words in result.stderr
    assert _run_status(tmp_path, "small") == "completed"


def test_the_python_entry_points_cancel_refuse_and_resume(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a project whose run is created but not yet worked, used from Python
    import etl
    from etl.core.config import load_settings
    from etl.core.errors import ConfigError
    from etl.pipeline import load_pipeline
    from etl.runtime.cancel import RunCancelled
    from etl.runtime.runs import open_run
    from etl.stores import Stores

    _project(tmp_path)
    (tmp_path / "slowpipes.py").write_text(SLOW_PIPELINE.replace("time.sleep(0.25)", "pass"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slowpipes", raising=False)  # another test's
    for name in [n for n in os.environ if n.startswith("ETL_")]:
        monkeypatch.delenv(name)
    conf = load_settings(cwd=tmp_path)
    stores = Stores.from_settings(conf)
    open_run(stores.state, load_pipeline("slowpipes:pipeline"), spec="slowpipes:pipeline",
             run_id="py-run")
    # When it is cancelled twice
    first = etl.cancel("py-run", settings=conf, stores=stores)
    second = etl.cancel("py-run", settings=conf, stores=stores)
    # Then the first cancel found it running, the second found it cancelled already
    assert (first.was, first.already) == ("running", False)
    assert second.already
    assert stores.state.get_run("py-run").status == "cancelled"
    # And running it without resume raises RunCancelled, loading nothing
    with pytest.raises(RunCancelled, match="--resume"):
        etl.run("slowpipes:pipeline", run_id="py-run", settings=conf, stores=stores)
    assert rows_loaded(tmp_path, "py-run") == 0
    # When it is resumed
    outcome = etl.run("slowpipes:pipeline", run_id="py-run", resume=True, processes=1,
                      settings=conf, stores=stores)
    # Then it completes with every row once, and a completed run cannot be cancelled
    assert outcome.completed and not outcome.cancelled and outcome.rows_loaded == ROWS
    _assert_loaded_once(tmp_path)
    with pytest.raises(ConfigError, match="completed"):
        etl.cancel("py-run", settings=conf, stores=stores)


def test_a_cancel_landing_after_the_last_load_leaves_the_run_to_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run whose every shard is loaded but which nobody has finalized yet (its last
    # load landed while the cancel was on its way)
    from etl.core.errors import ConfigError
    from etl.pipeline import load_pipeline
    from etl.runtime.cancel import cancel_run
    from etl.runtime.runs import open_run
    from etl.stores import open_state

    _project(tmp_path)
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slowpipes", raising=False)  # another test's
    run, _ = open_run(state, load_pipeline("slowpipes:pipeline"), spec="slowpipes:pipeline",
                      run_id="late")
    for shard in range(run.shards):
        assert state.finish_fetch("late", shard, 0)  # a shard with nothing left: complete
    # When it is cancelled
    with pytest.raises(ConfigError, match="every shard loaded"):
        cancel_run(state, "late")
    # Then the cancel is refused and the run keeps its status, for its finalizing to complete
    assert state.get_run("late").status == "running"
    state.close()


def test_the_workers_cancel_check_reads_a_runs_status_at_most_once_a_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a running run and a worker's watch that has looked at it once
    from etl.pipeline import load_pipeline
    from etl.runtime.cancel import CancelWatch, cancel_run
    from etl.runtime.runs import open_run
    from etl.stores import open_state

    _project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slowpipes", raising=False)  # another test's
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    open_run(state, load_pipeline("slowpipes:pipeline"), spec="slowpipes:pipeline", run_id="hot")
    slow, quick = CancelWatch(every=3600), CancelWatch(every=0.2)
    assert not slow.cancelled("hot", state) and not quick.cancelled("hot", state)
    # When the run is cancelled
    cancel_run(state, "hot")
    # Then a watch within its period answers from memory for any number of messages (no
    # read per message), and one whose period has passed reads the store again and sees it
    assert not any(slow.cancelled("hot", state) for _ in range(10_000))
    time.sleep(0.25)
    assert quick.cancelled("hot", state)
    state.close()
