"""`etl serve` against a real uvicorn process on a free localhost port: start runs, poll
them to the end, read results; bad input, the token, masking, and a server restart in the
middle of a run (embedded mode). The distributed case is in test_serve_distributed.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="etl serve needs the serve extra")
pytest.importorskip("uvicorn", reason="etl serve needs the serve extra")

from tests.serve_process import (ETL, SECRET, TOKEN, Served, children, expected_rows,  # noqa: E402
                                 kill_children, project)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = Served(tmp_path, project(tmp_path))
    yield server
    server.stop()
    kill_children(tmp_path)


def _sink_ids(workdir: Path) -> list[int]:
    parts = sorted((workdir / "out" / "servepipe").glob("part-*.parquet"))
    return sorted(pd.concat([pd.read_parquet(p) for p in parts])["id"].tolist()) if parts else []


def test_demo_is_started_polled_to_the_end_and_its_result_read(served: Served) -> None:
    # Given a server with the demo in its allow-list
    # When the demo is started through the seed path and its status polled to the end
    started = served.start({"pipeline": "etl.demo:pipeline", "shards": 4}, path="/task/start")
    assert started.status_code == 202, started.text
    task = started.json()
    assert task["status_url"] == f"/api/v1/task/status/{task['task_id']}" and not task["joined"]
    status = served.wait_done(task["task_id"])
    # Then it completed with every shard done and every row accounted for
    assert status["status"] == "completed", status
    assert status["progress"]["shards_done"] == status["progress"]["shards_total"] == 4
    assert status["progress"]["share"] == 1.0
    assert status["progress"]["rows_done"] == status["progress"]["rows_total"] == 336_776
    assert [s["status"] for s in status["shard_states"]] == ["done"] * 4
    # And the result (seed path and /api/v1 alike) is the run's summary
    result = served.client.get(f"/task/result/{task['task_id']}")
    assert result.status_code == 200, result.text
    summary = result.json()
    assert (summary["rows_in"], summary["rows_loaded"], summary["rows_quarantined"]) == \
        (336_776, 328_521, 8_255)
    assert summary["seconds"] > 0 and summary["rows_per_second"] > 0
    assert served.client.get(f"/api/v1/task/result/{task['task_id']}").json() == summary
    # And the quarantine counts by stage and reason, and the runs list, show it
    reasons = served.client.get(f"/api/v1/runs/{task['task_id']}/quarantine").json()
    assert reasons["reasons"] == [{"stage": "drop_rows", "rows": 8_255,
                                   "reason": "cancelled flight (no departure time)"}]
    assert served.client.get("/api/v1/runs").json()["runs"][0]["run_id"] == task["task_id"]
    # When the same run id is started again, it is the same run: nothing new starts
    again = served.start({"pipeline": "etl.demo:pipeline", "run_id": task["task_id"]})
    assert again.status_code == 202 and again.json()["task_id"] == task["task_id"]
    assert again.json()["joined"]
    assert len(served.client.get("/api/v1/runs").json()["runs"]) == 1


def test_a_client_run_id_is_one_run_and_errors_are_shown_masked(tmp_path: Path) -> None:
    # Given a pipeline whose sink fails one batch for good, with a password in the error
    served = Served(tmp_path, project(tmp_path, slow=0.2, fail=True))
    try:
        _failed_then_resumed(served)
    finally:
        served.stop()
        kill_children(tmp_path)


def _failed_then_resumed(served: Served) -> None:
    body = {"pipeline": "servepipe:pipeline", "run_id": "serve-client-1"}
    # When it is started twice with the same client run id while it works
    first, second = served.start(body), served.start(body)
    # Then both answers name that one run, the second as joined
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["task_id"] == second.json()["task_id"] == "serve-client-1"
    assert second.json()["joined"]
    # And a start of another run of the same pipeline is refused while it works
    other = served.start({"pipeline": "servepipe:pipeline", "run_id": "serve-client-2"})
    assert other.status_code == 409 and other.json()["field"] == "pipeline", other.text
    # And the run ends failed, with the error's password masked and no result yet
    status = served.wait_done("serve-client-1")
    assert status["status"] == "failed", status
    assert "postgresql://etl:***@" in status["last_error"]["message"]
    assert served.client.get("/api/v1/task/result/serve-client-1").status_code == 409
    listed = served.client.get("/api/v1/runs/serve-client-1/errors").json()["errors"]
    assert [(e["stage"], e["shard"], e["batch"]) for e in listed] == [("load", 1, 0)]
    assert listed[0]["context"]["attempts"] == 1 and "ConnectionError" in listed[0]["traceback"]
    for path in ("/api/v1/runs/serve-client-1/errors", "/api/v1/task/status/serve-client-1",
                 "/api/v1/runs", "/api/v1/runs/serve-client-1/shards"):
        assert SECRET not in served.client.get(path).text, path
    # When it is started again with its id (the outage is over)
    again = served.start(body)
    assert again.status_code == 202 and not again.json()["joined"], again.text
    # Then it resumes and completes, every row loaded or quarantined once
    status = served.wait_done("serve-client-1")
    assert status["status"] == "completed", status
    loaded, quarantined = expected_rows(12_000)
    result = served.client.get("/api/v1/task/result/serve-client-1").json()
    assert (result["rows_loaded"], result["rows_quarantined"]) == (loaded, quarantined)
    reasons = served.client.get("/api/v1/runs/serve-client-1/quarantine").json()["reasons"]
    assert {r["reason"] for r in reasons} == {"negative amount", "amount over 95"}
    assert sum(r["rows"] for r in reasons) == quarantined
    ids = _sink_ids(served.workdir)
    assert len(ids) == len(set(ids)) == loaded


def test_a_sink_that_refuses_the_connection_is_a_503_naming_it_masked(tmp_path: Path) -> None:
    # Given a served pipeline whose SQL sink's port refuses, its URL holding a password
    served = Served(tmp_path, project(tmp_path, allow="servepipe:unreachable"))
    try:
        # When it is started
        answer = served.start({"pipeline": "servepipe:unreachable"})
        # Then the start is refused as a service problem, naming the sink, password masked
        assert answer.status_code == 503, answer.text
        assert "postgresql://etl:***@127.0.0.1:1" in answer.text and SECRET not in answer.text
        assert served.client.get("/api/v1/runs").json()["runs"] == []  # no run was opened
    finally:
        served.stop()
        kill_children(tmp_path)


@pytest.mark.parametrize("method,path,body,status,field", [
    ("POST", "/api/v1/task/start", {"pipeline": "nosuch"}, 422, "pipeline"),
    ("POST", "/api/v1/task/start", {"pipeline": "os:system"}, 403, "pipeline"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe_missing:pipeline"}, 422, "pipeline"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe:pipeline", "shards": 0}, 422, "shards"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe:pipeline", "shards": "x"}, 422, "shards"),
    ("POST", "/api/v1/task/start", {}, 422, "pipeline"),
    ("POST", "/api/v1/task/start", {"pipeline": "etl.demo:pipeline",
                                    "window": {"start": "2013-03-01"}}, 422, "window.end"),
    ("POST", "/api/v1/task/start", {"pipeline": "etl.demo:pipeline",
                                    "window": {"start": "2013-03-02", "end": "2013-03-01"}},
     422, "window"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe:pipeline",
                                    "window": {"start": "1", "end": "2"}}, 422, "window"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe:pipeline", "run_id": "a/b"}, 422, "run_id"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe:pipeline", "run_id": "x",
                                    "fresh": True}, 422, "fresh"),
    ("POST", "/api/v1/task/start", {"pipeline": "servepipe:pipeline", "bogus": 1}, 422, "bogus"),
    ("GET", "/api/v1/task/status/no-such-run", None, 404, "run_id"),
    ("GET", "/task/status/no-such-run", None, 404, "run_id"),
    ("GET", "/api/v1/task/result/no-such-run", None, 404, "run_id"),
    ("GET", "/api/v1/runs/no-such-run/errors", None, 404, "run_id"),
    ("GET", "/api/v1/runs/no-such-run/quarantine", None, 404, "run_id"),
    ("GET", "/api/v1/runs?limit=0", None, 422, "limit"),
])
def test_bad_input_gets_a_4xx_with_a_body_naming_the_field(
        served: Served, method: str, path: str, body: dict | None, status: int, field: str) -> None:
    # Given a running server (with a token)
    # When a call with bad input is made
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answer = served.client.request(method, path, json=body, headers=headers)
    # Then it is answered with that 4xx and a JSON body saying what and which field
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert problem["error"] and problem["field"] == field, problem
    assert "Traceback" not in answer.text


def test_a_body_that_is_not_json_is_a_422(served: Served) -> None:
    answer = served.client.post("/api/v1/task/start", content=b"{not json",
                                headers={"Authorization": f"Bearer {TOKEN}",
                                         "Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["error"]


def test_an_unfinished_run_has_no_result_yet(tmp_path: Path) -> None:
    # Given a slow run
    server = Served(tmp_path, project(tmp_path, slow=0.5))
    try:
        task = server.start({"pipeline": "servepipe:pipeline"}).json()
        # When its result is asked while it works
        early = server.client.get(f"/api/v1/task/result/{task['task_id']}")
        # Then the answer is 409 saying it is not complete
        assert early.status_code == 409 and "not completed" in early.json()["error"]
    finally:
        server.stop()
        kill_children(tmp_path)


def test_the_token_is_required_for_every_change(served: Served, tmp_path: Path) -> None:
    body = {"pipeline": "servepipe:pipeline"}
    # Given a server with a token: no token, or a wrong one, is 401 and starts nothing
    assert served.start(body, token=None).status_code == 401
    assert served.start(body, token="wrong").status_code == 401
    assert served.start(body, token="wrong", path="/task/start").status_code == 401
    assert served.client.post("/api/v1/task/anything/cancel").status_code == 401
    assert served.client.get("/api/v1/runs").json()["runs"] == []
    # And reading needs none
    assert served.client.get("/api/v1/pipelines").json()["can_start"] is True


def test_without_a_token_the_server_is_read_only_and_loopback_only(tmp_path: Path) -> None:
    env = project(tmp_path, token=None)
    # Given no token: binding to every interface is refused in one line, exit 2
    refused = subprocess.run([*ETL, "serve", "--host", "0.0.0.0", "--port", "0"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "ETL_API_TOKEN" in refused.stderr
    # And on loopback it serves, but refuses every change with 403
    server = Served(tmp_path, env)
    try:
        answer = server.start({"pipeline": "servepipe:pipeline"}, token="anything")
        assert answer.status_code == 403 and "read-only" in answer.json()["error"]
        assert server.client.get("/api/v1/pipelines").json()["can_start"] is False
    finally:
        server.stop()


def test_a_server_restart_in_the_middle_of_a_run_loses_nothing(tmp_path: Path) -> None:
    # Given a slow run started by a server
    env = project(tmp_path, rows=40_000, slow=0.3)
    server = Served(tmp_path, env)
    run_id = server.start({"pipeline": "servepipe:pipeline", "run_id": "serve-restart"}).json()["task_id"]
    _wait_loaded(server, run_id, batches=2)
    child_pid = children(tmp_path)[0]["pid"]
    # When the server is killed mid-run, and a new one started
    server.stop(signal.SIGKILL)
    server = Served(tmp_path, env)
    try:
        # Then the new server took the run's child over: the run goes on
        status = server.client.get(f"/api/v1/task/status/{run_id}").json()
        assert status["status"] == "running" and status["worker"]["pid"] == child_pid, status
        assert status["worker"]["alive"]
        _wait_loaded(server, run_id,
                     batches=sum(s["batches_loaded"] for s in status["shard_states"]) + 2)
        # When the server and the run's processes are all killed, and a server started again
        server.stop(signal.SIGKILL)
        os.killpg(child_pid, signal.SIGKILL)
        time.sleep(0.5)
        server = Served(tmp_path, env)
        # Then it resumes the run, which completes with every row loaded exactly once
        status = server.wait_done(run_id)
        assert status["status"] == "completed", status
        loaded, quarantined = expected_rows(40_000)
        result = server.client.get(f"/api/v1/task/result/{run_id}").json()
        assert (result["rows_loaded"], result["rows_quarantined"]) == (loaded, quarantined)
        ids = _sink_ids(tmp_path)
        assert len(ids) == loaded and len(set(ids)) == loaded
    finally:
        server.stop()
        kill_children(tmp_path)


def _wait_loaded(server: Served, run_id: str, *, batches: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.client.get(f"/api/v1/task/status/{run_id}").json()
        if sum(s["batches_loaded"] for s in status["shard_states"]) >= batches:
            assert status["status"] == "running", "the run ended before the restart: make it slower"
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} loaded fewer than {batches} batches in {timeout} s")


def test_a_run_is_cancelled_and_resumed_over_http(tmp_path: Path) -> None:
    # Given a slow run working in the server's child
    server = Served(tmp_path, project(tmp_path, rows=24_000, slow=0.3))
    try:
        run_id = server.start({"pipeline": "servepipe:pipeline", "run_id": "serve-cancel"}).json()["task_id"]
        _wait_loaded(server, run_id, batches=2)
        # When it is cancelled over HTTP (the token is needed for that too)
        assert server.client.post(f"/api/v1/task/{run_id}/cancel").status_code == 401
        cancelled = server.client.post(f"/api/v1/task/{run_id}/cancel",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
        # Then the run ends cancelled, its child stops, and it has no result
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["was"] == "running"
        status = server.wait_done(run_id)
        assert status["status"] == "cancelled", status
        deadline = time.monotonic() + 60
        while server.client.get(f"/api/v1/task/status/{run_id}").json()["worker"]["alive"]:
            assert time.monotonic() < deadline, "the run's child did not stop"
            time.sleep(0.3)
        assert server.client.get(f"/api/v1/task/result/{run_id}").status_code == 409
        # When it is started again with resume
        resumed = server.start({"pipeline": "servepipe:pipeline", "run_id": run_id, "resume": True})
        assert resumed.status_code == 202, resumed.text
        # Then it completes where it stopped, every row loaded once
        assert server.wait_done(run_id)["status"] == "completed"
        loaded, quarantined = expected_rows(24_000)
        ids = _sink_ids(tmp_path)
        assert len(ids) == len(set(ids)) == loaded
        # And a completed run cannot be cancelled: 409 with a body
        late = server.client.post(f"/api/v1/task/{run_id}/cancel",
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert late.status_code == 409 and "completed" in late.json()["error"]
    finally:
        server.stop()
        kill_children(tmp_path)
