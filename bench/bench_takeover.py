"""Benchmark: takeover time after a worker SIGKILL, on RabbitMQ and on Redis, default settings.

Two `etl worker --preload demo` processes (2 threads each) work the demo run (336,776 rows,
20 shards, batches of 2,500). Once rows are loading and the first worker holds at least one
lease, it is SIGKILLed. The takeover time is the time from the kill until every task that
worker held (its leases at the moment of the kill) is finished by the other: its lease taken
over and released again, or its batch counted done in the dedup ledger. The run must then
complete. Default settings throughout: the lease TTL (30 s) and the Redis broker's own
heartbeat and maintenance defaults (only a key namespace of its own on Redis database 13,
removed afterwards).

    python bench/bench_takeover.py [--repeat 5] [--brokers rabbitmq,redis]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etl.core.names import task_fingerprint  # noqa: E402
from etl.core.processes import HOST  # noqa: E402

ETL = [sys.executable, "-m", "cli.main"]
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Redis with the broker's default heartbeat and maintenance; a namespace of its own.
REDIS = "redis://127.0.0.1:6379/13?namespace={namespace}"


@dataclasses.dataclass
class Takeover:
    """One measured takeover: seconds from the kill until the victim's tasks were finished by
    the other worker, the tasks it held, and the run (completed or not)."""

    seconds: float
    held: dict[str, int]
    run_id: str
    completed: bool
    workdir: Path


def broker_url(kind: str) -> str:
    """The URL of `kind` with default settings (a fresh namespace on Redis)."""
    if kind == "rabbitmq":
        return RABBITMQ
    return REDIS.format(namespace=f"etl-takeover-{uuid.uuid4().hex[:10]}")


def env_for(workdir: Path, url: str, queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_BROKER_URL=url, ETL_QUEUE=queue, ETL_DEMO_OUTPUT=str(workdir / "out" / "flights"),
               PYTHONPATH=os.pathsep.join([str(workdir), str(ROOT)]))
    return env


def _db(workdir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{workdir / '.etl' / 'state.db'}?mode=ro", uri=True, timeout=10)


def _rows_loaded(workdir: Path) -> int:
    try:
        with _db(workdir) as conn:
            return int(conn.execute("SELECT COALESCE(SUM(rows_loaded), 0) FROM TaskCheckpoint")
                       .fetchone()[0])
    except sqlite3.Error:
        return 0


def _held_by(workdir: Path, pid: int) -> dict[str, int]:
    """task key -> token of the leases the process `pid` of this host holds."""
    prefix = f"{HOST}:{pid}@"
    try:
        with _db(workdir) as conn:
            rows = conn.execute("SELECT task_key, token FROM PendingTasks WHERE "
                                "substr(taken_by, 1, ?) = ?", (len(prefix), prefix)).fetchall()
    except sqlite3.Error:
        return {}
    return {key: token for key, token in rows}


def _finished(workdir: Path, held: dict[str, int]) -> bool:
    """Whether every task of `held` was finished by another owner: its lease taken over and
    released, or (clean, load) its batch done in the dedup ledger."""
    with _db(workdir) as conn:
        for key, token in held.items():
            taken_by, now = conn.execute("SELECT taken_by, token FROM PendingTasks WHERE task_key = ?",
                                         (key,)).fetchone()
            if taken_by is None and now > token:
                continue
            stage, run_id, shard, *rest = key.split(":")
            if stage != "fetch" and conn.execute(
                    "SELECT 1 FROM TaskDedup WHERE task_fingerprint = ?",
                    (task_fingerprint(stage, run_id, int(shard), int(rest[0])),)).fetchone():
                continue
            return False
    return True


def _complete(workdir: Path, run_id: str) -> bool:
    try:
        with _db(workdir) as conn:
            row = conn.execute("SELECT status FROM EtlRun WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return False
    return bool(row) and row[0] == "completed"


def drop(url: str, queue: str) -> None:
    """Delete the queue (with its delay and dead-letter queues); on Redis every key of the
    URL's namespace."""
    from etl.brokers import open_broker, queues_of

    broker = open_broker(url)
    queues = queues_of(broker)
    try:
        queues.delete(queue)
        namespace = getattr(broker, "namespace", None)
        if namespace and namespace.startswith("etl-takeover-"):
            client = broker.client  # type: ignore[attr-defined]
            for key in client.scan_iter(f"{namespace}:*"):
                client.delete(key)
    finally:
        queues.close()
        broker.close()


def takeover(kind: str, workdir: Path, *, give_up: float = 60.0, pipeline: str = "demo",
             shards: int = 20, batch_size: int = 2500, kill_after: int = 20_000) -> Takeover:
    """Run `pipeline` (default the demo) on two workers of `kind`, SIGKILL one once
    `kill_after` rows are loaded and it holds a lease, time the takeover, and follow the run
    to its end. Raises AssertionError when the takeover takes over `give_up` seconds or the
    run does not complete."""
    plan = ["-p", pipeline, "--shards", str(shards)]
    url = broker_url(kind)
    queue = f"takeover-{uuid.uuid4().hex[:10]}"
    env = env_for(workdir, url, queue)
    workers = [subprocess.Popen([*ETL, "-v", "worker", "--threads", "2", "--preload", pipeline],
                                cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                stderr=(workdir / f"worker-{i}.log").open("w"))
               for i in range(2)]
    try:
        deadline = time.monotonic() + 90  # until both have parsed the source
        while time.monotonic() < deadline and not all(
                "preloaded" in (workdir / f"worker-{i}.log").read_text() for i in range(2)):
            time.sleep(0.05)
        sent = subprocess.run([*ETL, "run", "--fresh", "--no-progress", *plan,
                               "--batch-size", str(batch_size)], cwd=workdir, env=env, text=True,
                              capture_output=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        run_id = sent.stdout.strip().splitlines()[-1]
        victim = workers[0]
        deadline = time.monotonic() + 120
        held: dict[str, int] = {}
        while time.monotonic() < deadline and not _complete(workdir, run_id):
            if _rows_loaded(workdir) >= kill_after:
                held = _held_by(workdir, victim.pid)
                if held:
                    break
            time.sleep(0.005)
        assert held, "the victim held no lease before the run ended"
        victim.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        held = _held_by(workdir, victim.pid) or held  # what it held when it died
        victim.wait(timeout=30)
        deadline = time.monotonic() + give_up
        while not _finished(workdir, held):
            assert time.monotonic() < deadline, (
                f"{kind}: the killed worker's tasks {sorted(held)} were not taken over within "
                f"{give_up:.0f} s")
            time.sleep(0.02)
        seconds = time.perf_counter() - killed
        final = subprocess.run([*ETL, "run", *plan, "--run-id", run_id, "--wait", "--no-progress"],
                               cwd=workdir, env=env, text=True, capture_output=True, timeout=300)
        assert final.returncode == 0, final.stderr
        return Takeover(seconds, held, run_id, _complete(workdir, run_id), workdir)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        drop(url, queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    args = parser.parse_args()
    for kind in args.brokers.split(","):
        times = []
        for i in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                measured = takeover(kind, Path(tmp))
            times.append(measured.seconds)
            print(f"{kind} #{i + 1}: takeover {measured.seconds:.2f} s "
                  f"({len(measured.held)} task(s) held by the killed worker)", flush=True)
        print(f"{kind}: takeover after a worker SIGKILL, median of {len(times)}: "
              f"{statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})",
              flush=True)


if __name__ == "__main__":
    main()
