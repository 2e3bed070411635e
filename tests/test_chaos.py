"""Chaos: random SIGKILLs of `etl run` (right after the run record is created, and at random
moments), and of `etl worker` processes and their supervisors on RabbitMQ and on Redis.
Every completed run must hold each key exactly once, and no process may outlive the one it
belongs to. Sized to keep the suite short; the takeover times are printed (`-s`)."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster import ETL, Cluster
from tests.test_cli import _user_pipeline
from tests.watch import alive, children, rows_loaded

pytestmark = pytest.mark.slow

ROWS = 20_000


def _orders(workdir: Path, rows: int = ROWS) -> None:
    lines = ["order_id,amount,sku"] + [f"{i},{i * 1.5},sku{i % 7}" for i in range(rows)]
    (workdir / "orders.csv").write_text("\n".join(lines) + "\n")


def _ours(workdir: Path) -> list[int]:
    """Live processes started in `workdir` (by cwd), zombies excluded."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == str(workdir) \
                    and alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _no_orphans(workdir: Path, *, grace: float = 5.0) -> None:
    deadline = time.monotonic() + grace
    while (left := _ours(workdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes outlived their parent: {sorted(left)}"


def _exactly_once(workdir: Path, rows: int = ROWS) -> None:
    loaded = pd.read_parquet(workdir / "out" / "orders")
    assert len(loaded) == rows and loaded["order_id"].is_unique, (len(loaded), rows)
    assert sorted(loaded["order_id"]) == list(range(rows))


def test_etl_run_killed_at_random_twenty_times_loses_and_doubles_nothing(tmp_path: Path) -> None:
    # Given a user's pipeline over 20,000 orders in 8 shards of 400 rows
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(PYTHONPATH=str(tmp_path), ETL_LEASE_TTL="10")
    command = [*ETL, "run", "-p", "mypipes:orders", "--shards", "8", "--batch-size", "400",
               "--no-progress"]
    rng = random.Random(20261130)
    kills, completed, resumes = 0, 0, []
    # When `etl run` is SIGKILLed 20 times: right after the run record is created, then at
    # random moments; after every third kill the same command runs to the end
    while kills < 20:
        if kills % 7 == 0:  # a new run, killed between its record and its checkpoints
            crashed = subprocess.run([*command, "--fresh"], cwd=tmp_path, capture_output=True,
                                     text=True, env={**env, "ETL_CRASH_AT": "run.after_create:1"},
                                     timeout=120)
            assert crashed.returncode == -signal.SIGKILL, crashed.stderr
            kills += 1
            _no_orphans(tmp_path)
            continue
        run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.2, 1.5))
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            kills += 1
        run.communicate(timeout=60)
        _no_orphans(tmp_path)  # its worker processes died with it
        if kills % 3 == 0:
            started = time.monotonic()
            final = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                                   timeout=300)
            resumes.append(time.monotonic() - started)
            assert final.returncode == 0, final.stderr
            assert "completed" in final.stdout or "nothing to load" in final.stderr
            completed += 1
            # Then each completed run holds every order exactly once
            _exactly_once(tmp_path)
    assert completed >= 5
    clean = time.monotonic()
    fresh = subprocess.run([*command, "--fresh"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    clean = time.monotonic() - clean
    assert fresh.returncode == 0, fresh.stderr
    _exactly_once(tmp_path)
    print(f"\nembedded: {kills} kills, resume after a kill median {statistics.median(resumes):.2f} s "
          f"(max {max(resumes):.2f} s), clean run {clean:.2f} s")


@pytest.mark.services
@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_worker_processes_and_supervisors_killed_at_random_lose_and_double_nothing(
        cluster: Cluster) -> None:
    # Given two `etl worker --processes 2` supervisors and 60,000 orders enqueued
    _orders(cluster.workdir, rows=60_000)
    _user_pipeline(cluster.workdir)

    def supervisor() -> subprocess.Popen[str]:
        log = open(cluster.workdir / f"supervisor-{len(cluster.workers)}.log", "w")
        process = subprocess.Popen([*ETL, "worker", "--processes", "2", "--threads", "2"],
                                   cwd=cluster.workdir, env=cluster.env, text=True, stdout=log,
                                   stderr=subprocess.STDOUT)
        cluster.workers.append(process)
        return process

    supervisors = [supervisor(), supervisor()]
    plan = ["-p", "mypipes:orders", "--shards", "8"]
    run_id = cluster.enqueue(*plan, "--batch-size", "200")
    rng = random.Random(1130)
    kills, runs, takeovers = 0, 1, []
    # When a worker process or a whole supervisor is SIGKILLed 10 times at random moments
    # (a run that completes meanwhile is checked, and the next one enqueued)
    while kills < 10:
        if cluster.complete(run_id):
            _exactly_once(cluster.workdir, rows=60_000)
            run_id, runs = cluster.enqueue(*plan, "--batch-size", "200"), runs + 1
        time.sleep(rng.uniform(0.2, 0.8))
        target = rng.choice([s for s in supervisors if s.poll() is None])
        workers = children(target.pid)
        before = rows_loaded(cluster.workdir, run_id)
        if kills % 2 and workers:
            os.kill(rng.choice(workers), signal.SIGKILL)  # the supervisor starts another
        else:
            target.send_signal(signal.SIGKILL)
            target.wait(timeout=30)
            supervisors.remove(target)
            # Then its workers die with it: none is left consuming
            deadline = time.monotonic() + 5
            while any(map(alive, workers)) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [pid for pid in workers if alive(pid)]
            assert not left, f"workers outlived their supervisor: {left}"
            supervisors.append(supervisor())
        kills += 1
        killed_at = time.monotonic()
        while rows_loaded(cluster.workdir, run_id) <= before and not cluster.complete(run_id) \
                and time.monotonic() - killed_at < 60:
            time.sleep(0.05)
        takeovers.append(time.monotonic() - killed_at)
    # And the last run is followed to its end
    final = cluster.etl("run", *plan, "--run-id", run_id, "--wait", "--no-progress", timeout=300)
    # Then it completed with every order exactly once
    assert final.returncode == 0, final.stderr
    _exactly_once(cluster.workdir, rows=60_000)
    print(f"\n{cluster.env['ETL_BROKER_URL'].split(':')[0]}: {kills} kills over {runs} run(s), progress resumed "
          f"after a kill in median {statistics.median(takeovers):.2f} s (max {max(takeovers):.2f} s)")
