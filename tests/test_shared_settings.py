"""A worker whose shared settings (etl.core.shared_settings) differ from those of the `etl run`
that sent the work says so, once per run and setting, with passwords masked; same settings,
a run recorded before the check existed, or an ordinary embedded run: nothing is said."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

from etl.core.config import Settings, load_settings
from etl.core.shared_settings import SHARED_PARAM, recorded_settings
from etl.pipeline import load_pipeline
from etl.runtime.context import ContextCache
from etl.runtime.runs import open_run
from etl.stores.state import open_state

SECRET = "s3cr3t-Pw/x"
WARNED = "was sent with"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with 20 rows and an importable module of two pipelines over them, one on a
    queue of its own."""
    (tmp_path / "rows.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(20)))
    (tmp_path / "sharedpipes.py").write_text(textwrap.dedent("""
        from pathlib import Path

        from etl import FileSource, ParquetSink, Pipeline
        from shards import RangeShards

        HERE = Path(__file__).parent
        rows = Pipeline(name="rows", source=FileSource(str(HERE / "rows.csv")),
                        sink=ParquetSink(str(HERE / "out")), key=["id"],
                        shards=RangeShards("id", 2), batch_size=10)
        routed = Pipeline(name="routed", source=FileSource(str(HERE / "rows.csv")),
                          sink=ParquetSink(str(HERE / "out_routed")), key=["id"],
                          shards=RangeShards("id", 1), batch_size=10, queue="own-queue")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sharedpipes", raising=False)
    return tmp_path


def _settings(workdir: Path, **overrides: str) -> Settings:
    env = {"ETL_STATE_URL": f"sqlite:///{workdir}/state.db",
           "ETL_OBJECTS_URL": f"file://{workdir}/objects", "ETL_RESULTS_URL": "none",
           "ETL_BROKER_URL": "amqp://etl:broker-pw@127.0.0.1:5672/%2F"}
    env.update({f"ETL_{name.upper()}": value for name, value in overrides.items()})
    return load_settings(cwd=workdir, env=env)


def _sent(workdir: Path, sender: Settings | None, *, spec: str = "sharedpipes:rows") -> str:
    """A new run of `spec`, recording `sender`'s shared settings as `etl run` does (none:
    a run recorded before the check existed); its id."""
    params = {SHARED_PARAM: recorded_settings(sender)} if sender else None
    run, _ = open_run(open_state(f"sqlite:///{workdir}/state.db"), load_pipeline(spec),
                      spec=spec, fresh=True, params=params)
    return run.run_id


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and WARNED in r.getMessage()]


def test_a_worker_with_another_objects_url_warns_once_per_run_masked(
        project: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given two runs sent with objects in S3 (a secret key in the URL)
    sender = _settings(project, objects_url=f"s3://AKIAKEY:{SECRET}@bkt/x")
    first, second = _sent(project, sender), _sent(project, sender)
    # When a worker with its objects on local disk works each several times
    caplog.set_level(logging.DEBUG)
    worker = ContextCache(_settings(project), check_shared_settings=True)
    for _ in range(3):
        worker.get(first)
        worker.get(second)
    # Then it warned once per run, naming the setting and both values, the password masked
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    for run_id, line in zip((first, second), warnings):
        assert line.startswith(f"run {run_id} was sent with objects_url=s3://AKIAKEY:***@bkt/x "
                               f"but this worker has file://{project}/objects: workers read "
                               "their own settings")
    # And the secret is in no log line, nor in the run's record
    assert SECRET not in caplog.text and "broker-pw" not in caplog.text
    assert SECRET not in str(open_state(f"sqlite:///{project}/state.db").get_run(first).params)


def test_same_settings_and_runs_without_a_record_say_nothing(
        project: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a run sent with the worker's own settings, and one recorded before the check
    settings = _settings(project, demo_output="out/elsewhere")
    same, old = _sent(project, settings), _sent(project, None)
    # And a run of a pipeline on its own queue, sent with another `queue` setting
    routed = _sent(project, _settings(project, demo_output="out/elsewhere", queue="other"),
                   spec="sharedpipes:routed")
    # When a worker works them
    caplog.set_level(logging.WARNING)
    worker = ContextCache(settings, check_shared_settings=True)
    for run_id in (same, old, routed):
        worker.get(run_id)
    # Then nothing is said: a pipeline's own queue is what its messages travel on
    assert _warnings(caplog) == []
    # And a different demo_output is said of a recorded run only
    other = ContextCache(_settings(project), check_shared_settings=True)
    for run_id in (same, old):
        other.get(run_id)
    assert [line.split(" but")[0] for line in _warnings(caplog)] == [
        f"run {same} was sent with demo_output=out/elsewhere"]


def test_an_ordinary_embedded_run_records_and_warns_nothing(
        project: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given the embedded defaults (stub:// broker)
    import etl

    settings = load_settings(cwd=project, env={
        "ETL_STATE_URL": f"sqlite:///{project}/state.db",
        "ETL_OBJECTS_URL": f"file://{project}/objects", "ETL_RESULTS_URL": "none"})
    # When a run is worked here
    caplog.set_level(logging.WARNING)
    outcome = etl.run("sharedpipes:rows", settings=settings, processes=1, threads=2)
    # Then it completes with no warning, and its record holds no shared settings
    assert outcome.completed
    assert _warnings(caplog) == []
    run = open_state(f"sqlite:///{project}/state.db").get_run(outcome.run_id)
    assert SHARED_PARAM not in run.params


@pytest.mark.services
def test_a_worker_on_rabbitmq_with_another_demo_output_says_so_once(tmp_path: Path) -> None:
    # Given a run of 200 orders in 2 shards sent to RabbitMQ, no worker running
    from tests.cluster import Cluster, broker_url
    from tests.test_cli import _orders, _user_pipeline

    _orders(tmp_path)
    _user_pipeline(tmp_path)
    cluster = Cluster(tmp_path, broker_url("rabbitmq"))
    try:
        sent_with = cluster.env["ETL_DEMO_OUTPUT"]
        run_id = cluster.enqueue("-p", "mypipes:orders", "--shards", "2")
        # When a burst worker process with another ETL_DEMO_OUTPUT works it
        cluster.env["ETL_DEMO_OUTPUT"] = str(tmp_path / "elsewhere")
        worker = cluster.etl("worker", "--burst", "--processes", "1", timeout=120)
        # Then the run completes, and the worker's log says the difference once
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert cluster.complete(run_id)
        warned = [line for line in worker.stderr.splitlines() if WARNED in line]
        assert len(warned) == 1, worker.stderr[-3000:]
        assert (f"run {run_id} was sent with demo_output={sent_with} but this worker has "
                f"{tmp_path / 'elsewhere'}") in warned[0]
    finally:
        cluster.stop()
