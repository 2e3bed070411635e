"""`etl serve` with RabbitMQ and `etl worker` processes: a start enqueues the run through the
runner (wait=False), workers work it, the server shows its progress, its dead letters
(with masked errors) and the queue gauges, and reads its result."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="etl serve needs the serve extra")

from tests.cluster import broker_url  # noqa: E402
from tests.serve_process import (ETL, SECRET, Served, etl_workers, expected_rows,  # noqa: E402
                                 project)

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]


@pytest.fixture
def rabbit(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A project on RabbitMQ with a queue of its own and two `etl worker`s."""
    url = broker_url("rabbitmq")
    env = project(tmp_path, broker_url=url, queue=f"test-serve-{uuid.uuid4().hex[:10]}",
                  slow=0.1, fail=True)
    with etl_workers(tmp_path, env):
        server = Served(tmp_path, env)
        yield server, env
        server.stop()


def test_a_run_started_over_http_is_worked_by_etl_workers(rabbit) -> None:  # type: ignore[no-untyped-def]
    server, env = rabbit
    # Given two workers on a queue of this test, and a sink that fails one batch for good
    # When a run is started over HTTP
    started = server.start({"pipeline": "servepipe:pipeline", "run_id": "serve-dist-1"})
    assert started.status_code == 202, started.text
    # Then the failed batch shows as a dead letter of the run, its password masked
    letters = _poll(lambda: server.client.get("/api/v1/runs/serve-dist-1/dead-letters").json()
                    ["dead_letters"])
    assert letters[0]["run_id"] == "serve-dist-1" and letters[0]["shard"] == 1
    assert "ConnectionError" in letters[0]["error"]
    text = server.client.get("/api/v1/runs/serve-dist-1/dead-letters").text
    assert SECRET not in text
    # And the queue gauges show the workers and the dead letter
    gauges = server.client.get("/api/v1/queues").json()
    assert gauges["mode"] == "distributed" and gauges["queues"][0]["queue"] == env["ETL_QUEUE"]
    assert gauges["queues"][0]["consumers"] >= 1 and gauges["queues"][0]["dead_letters"] == 1
    assert "guest:***@" in gauges["broker"]
    # When the dead letter is re-driven (the outage is over), the run completes
    redrive = subprocess.run([*ETL, "dlq", "retry", "--run", "serve-dist-1"], cwd=server.workdir,
                             env=env, capture_output=True, text=True, timeout=120)
    assert redrive.returncode == 0, redrive.stderr
    status = server.wait_done("serve-dist-1")
    assert status["status"] == "completed", status
    # Then its result adds up, and a start of the same run id again is that run
    loaded, quarantined = expected_rows(12_000)
    result = server.client.get("/task/result/serve-dist-1").json()
    assert (result["rows_loaded"], result["rows_quarantined"]) == (loaded, quarantined)
    again = server.start({"pipeline": "servepipe:pipeline", "run_id": "serve-dist-1"})
    assert again.status_code == 202 and again.json()["joined"]


def _poll(read, timeout: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"nothing after {timeout} s")
