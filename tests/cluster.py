"""A test cluster: a working directory, a queue of its own on the real broker, and the
`etl` processes (workers, runs) of one test, sharing the SQLite state, the local object
store and the Parquet sink of that directory."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import port_open, service_missing

ETL = [sys.executable, "-m", "cli.main"]
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Dead workers' messages come back after 4 s without a heartbeat, checked on 1 in 5 commands.
REDIS = "redis://127.0.0.1:6379/0?heartbeat_timeout=4000&maintenance_chance=200000"


def broker_url(kind: str) -> str:
    """The broker URL of `kind`, or a skip (a failure under CI) when it does not answer."""
    if kind == "rabbitmq":
        if not port_open("127.0.0.1", 5672):
            service_missing("RabbitMQ", "nothing listens on 127.0.0.1:5672")
        return RABBITMQ
    if not port_open("127.0.0.1", 6379):
        service_missing("Redis", "nothing listens on 127.0.0.1:6379")
    return REDIS


class Cluster:
    """A working directory, a queue, and the `etl` processes of one test."""

    def __init__(self, workdir: Path, broker_url: str) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
        self.env.update(ETL_BROKER_URL=broker_url, ETL_QUEUE=f"test-{uuid.uuid4().hex[:10]}",
                        ETL_LEASE_TTL="3", ETL_DEMO_OUTPUT=str(workdir / "out" / "flights"),
                        PYTHONPATH=os.pathsep.join([str(workdir), os.getcwd()]))
        self.workers: list[subprocess.Popen[str]] = []
        #: Queues this cluster's runs used, deleted from the broker when it stops.
        self.queues = [self.env["ETL_QUEUE"]]

    def etl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ETL, *args], cwd=self.workdir, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def start_worker(self, *args: str, threads: int = 2) -> subprocess.Popen[str]:
        log = open(self.workdir / f"worker-{len(self.workers)}.log", "w")
        worker = subprocess.Popen([*ETL, "worker", "--threads", str(threads), *args], cwd=self.workdir,
                                  env=self.env, text=True, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
        self._delete_queues()

    def _delete_queues(self) -> None:
        """Drop this test's queues: RabbitMQ keeps durable queues forever and Redis keeps dead
        letters for days, so runs of the suite would pile them up."""
        from etl.brokers import open_broker, queues_of

        broker = open_broker(self.env["ETL_BROKER_URL"])
        queues = queues_of(broker)
        try:
            for queue in self.queues:
                queues.delete(queue)
        finally:
            queues.close()
            broker.close()

    def enqueue(self, *args: str) -> str:
        result = self.etl("run", "--fresh", "--no-progress", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def rows_loaded(self) -> int:
        with sqlite3.connect(self.workdir / ".etl" / "state.db", timeout=10) as conn:
            return int(conn.execute("SELECT COALESCE(SUM(rows_loaded), 0) FROM TaskCheckpoint").fetchone()[0])

    def complete(self, run_id: str) -> bool:
        with sqlite3.connect(self.workdir / ".etl" / "state.db", timeout=10) as conn:
            status = conn.execute("SELECT status FROM EtlRun WHERE run_id = ?", (run_id,)).fetchone()
        return bool(status) and status[0] == "completed"
