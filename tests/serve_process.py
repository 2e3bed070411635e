"""A real `etl serve` process on a free localhost port for the serve tests, in a working
directory of its own with a small pipeline module (`servepipe`) beside it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

from tests.conftest import free_port

ETL = [sys.executable, "-m", "cli.main"]
TOKEN = "s3rve-t0ken"
#: A password in a URL that the injected error carries: it must never be shown.
SECRET = "hunter2pw"

#: A pipeline over ROWS rows of a CSV (4 hash shards, batches of 1,000 rows): DropRows
#: quarantines negative amounts and amounts over 95. With SERVE_TEST_FAIL=1 the sink fails
#: its first write of shard 1 batch 0 (no retries: the run fails, and its next start
#: resumes and completes it). Each write waits SERVE_TEST_SLOW seconds so a run lasts long
#: enough to be watched and interrupted.
PIPELINE = '''
import os
import time
from pathlib import Path

import pandas as pd

from etl import FileSource, ParquetSink, Pipeline, RetryPolicy
from shards import HashShards
from stages import DropRows

HERE = Path(__file__).parent
ROWS = int(os.environ.get("SERVE_TEST_ROWS", "12000"))


class FlakySink(ParquetSink):
    def write_parquet(self, data, *, run_id, shard, batch):
        time.sleep(float(os.environ.get("SERVE_TEST_SLOW", "0")))
        marker = HERE / f"failed-{run_id}-{shard}-{batch}"
        if os.environ.get("SERVE_TEST_FAIL") == "1" and shard == 1 and batch == 0 \
                and not marker.exists():
            marker.write_text("once")
            raise ConnectionError("injected outage: sink at postgresql://etl:%s@db.example/x "
                                  "not reachable" % "hunter2pw")
        return super().write_parquet(data, run_id=run_id, shard=shard, batch=batch)


def pipeline():
    source = HERE / "serve_source.csv"
    if not source.exists():
        ids = range(ROWS)
        pd.DataFrame({"id": ids, "amount": [(-1 if i % 50 == 7 else i % 97) for i in ids],
                      "note": [f"n{i}" for i in ids]}).to_csv(source, index=False)
    return Pipeline(name="servepipe", source=FileSource(str(source)),
                    stages=[DropRows("amount < 0", reason="negative amount"),
                            DropRows("amount > 95", reason="amount over 95")],
                    sink=FlakySink(str(HERE / "out" / "servepipe")), key=["id"],
                    shards=HashShards(["id"], 4), batch_size=1000,
                    retry=RetryPolicy(max_retries=0))


def unreachable():
    """servepipe into a PostgreSQL table on a port that refuses (password in the URL)."""
    import dataclasses

    from etl.sinks import SqlSink

    return dataclasses.replace(pipeline(), sink=SqlSink("postgresql://etl:%s@127.0.0.1:1/test" % "hunter2pw",
                                        table="servepipe"))
'''


def expected_rows(rows: int) -> tuple[int, int]:
    """(loaded, quarantined) of a servepipe run over `rows` rows."""
    bad = sum(1 for i in range(rows) if i % 50 == 7 or i % 97 == 96)
    return rows - bad, bad


def project(workdir: Path, *, broker_url: str | None = None, queue: str | None = None,
            token: str | None = TOKEN, rows: int = 12000, slow: float = 0.0, fail: bool = False,
            allow: str = "servepipe:pipeline,etl.demo:pipeline,servepipe_missing:pipeline") -> dict[str, str]:
    """Write the pipeline module into `workdir`; the environment of its processes."""
    (workdir / "servepipe.py").write_text(PIPELINE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_SERVE_PIPELINES=allow, ETL_DEMO_OUTPUT=str(workdir / "out" / "flights"),
               SERVE_TEST_ROWS=str(rows), SERVE_TEST_SLOW=str(slow), ETL_LEASE_TTL="3",
               SERVE_TEST_FAIL="1" if fail else "0",
               PYTHONPATH=os.pathsep.join([str(workdir), os.getcwd()]))
    if token:
        env["ETL_API_TOKEN"] = token
    if broker_url:
        env["ETL_BROKER_URL"] = broker_url
    if queue:
        env["ETL_QUEUE"] = queue
    return env


class Served:
    """One `etl serve` process; `client` talks to it."""

    def __init__(self, workdir: Path, env: dict[str, str], *, host: str = "127.0.0.1") -> None:
        self.workdir, self.env, self.port = workdir, env, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"serve-{self.port}.log", "w")
        self.process = subprocess.Popen([*ETL, "serve", "--host", host, "--port", str(self.port)],
                                        cwd=workdir, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/api/v1/pipelines").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"etl serve did not come up: {self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        return (self.workdir / f"serve-{self.port}.log").read_text()

    def start(self, body: dict[str, Any], *, token: str | None = TOKEN,
              path: str = "/api/v1/task/start") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.post(path, json=body, headers=headers)

    def wait_done(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        """Poll the run's status until it is no longer running; the last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.client.get(f"/api/v1/task/status/{run_id}").json()
            if status["status"] != "running":
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still running: {json.dumps(status)[:2000]}")
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def children(workdir: Path) -> list[dict[str, Any]]:
    """The run children the servers of `workdir` wrote down."""
    folder = workdir / ".etl" / "serve" / "children"
    return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []


def kill_children(workdir: Path) -> None:
    """End what the tests' servers left running (each child leads its own process group)."""
    for child in children(workdir):
        try:
            os.killpg(int(child["pid"]), signal.SIGKILL)
        except OSError:
            pass


@contextlib.contextmanager
def etl_workers(workdir: Path, env: dict[str, str], count: int = 2) -> Iterator[None]:
    """`count` `etl worker` processes of `env`'s broker and queue; the queue is deleted after."""
    workers = [subprocess.Popen([*ETL, "worker", "--threads", "2"], cwd=workdir, env=env,
                                stdout=open(workdir / f"worker-{i}.log", "w"),
                                stderr=subprocess.STDOUT) for i in range(count)]
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
        from etl.brokers import open_broker, queues_of

        broker = open_broker(env["ETL_BROKER_URL"])
        try:
            queues_of(broker).delete(env["ETL_QUEUE"])
        finally:
            broker.close()
