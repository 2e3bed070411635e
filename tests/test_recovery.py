"""Recovery from dead processes: workers die with their supervisor, a child whose parent died
before it could ask the kernel to follow it ends at once, a lease whose owner is provably
dead (same host, its process gone) is taken over at once, a dead worker's work comes back
within seconds on RabbitMQ and on Redis with default settings, and `etl worker` with a
refused login ends with one line and exit status 3.

Real processes and real SIGKILLs throughout; each broker test uses a queue of its own (on
Redis also a key namespace of its own, on database 13), deleted at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.bench_takeover import takeover
from etl.runtime.leases import LeaseBusy, LeaseKeeper
from etl.core.processes import HOST, owner_is_dead, process_name, start_time
from etl.stores.state import StateStore
from tests.cluster import ETL, RABBITMQ, Cluster, broker_url
from tests.test_state_conformance import store  # noqa: F401 - the same SQLite and Mongo stores
from tests.watch import alive, children, rows_loaded

ROOT = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------------------

def _wait_for(predicate, timeout: float, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def _consumers(queue: str) -> int:
    from etl.brokers import open_broker, queues_of

    broker = open_broker(RABBITMQ)
    queues = queues_of(broker)
    try:
        return queues.counts(queue).consumers
    finally:
        queues.close()
        broker.close()


def _dead_owner() -> str:
    """The owner name of a process of this host that has ended (started, then reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    name = process_name(child.pid)
    child.kill()
    child.wait()
    return f"{name}:12345"


# -- item 6: no orphans ----------------------------------------------------------------------

@pytest.mark.services
def test_sigkilled_supervisor_leaves_no_worker_and_no_consumer(tmp_path: Path) -> None:
    # Given `etl worker --processes 2` consuming a queue of its own on RabbitMQ
    cluster = Cluster(tmp_path, broker_url("rabbitmq"))
    try:
        supervisor = cluster.start_worker("--processes", "2")
        queue = cluster.env["ETL_QUEUE"]
        assert _wait_for(lambda: len(children(supervisor.pid)) == 2, 60), "no 2 workers forked"
        workers = children(supervisor.pid)
        assert _wait_for(lambda: _consumers(queue) >= 2, 60), "the workers never consumed"
        # When the supervisor is SIGKILLed
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(timeout=30)
        # Then within a few seconds no worker process is left, and the queue has no consumer
        gone = _wait_for(lambda: not any(alive(pid) for pid in workers), 5)
        left = [pid for pid in workers if alive(pid)]
        for pid in left:  # do not leave them consuming other tests' nothing
            os.kill(pid, signal.SIGKILL)
        assert gone, f"worker processes {left} outlived their supervisor"
        assert _wait_for(lambda: _consumers(queue) == 0, 5), "the queue still has consumers"
    finally:
        cluster.stop()


ORPHAN_SCRIPT = textwrap.dedent('''
    import inspect, os, sys, time
    sys.path.insert(0, {root!r})
    from etl.runtime import embedded

    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:  # the parent of the embedded child
        parent = os.getpid()
        if os.fork() == 0:  # the embedded child, slow to start: its parent dies first
            os.close(read)
            while os.getppid() == parent:
                time.sleep(0.005)
            try:  # what an embedded child does first
                if inspect.signature(embedded._die_with_parent).parameters:
                    embedded._die_with_parent(parent)
                else:
                    embedded._die_with_parent()
            except Exception as exc:
                os.write(write, f"raised {{exc!r}}\\n".encode())
            os.write(write, f"survived {{os.getpid()}}\\n".encode())
            time.sleep(3)
            os._exit(0)
        os._exit(0)  # the parent dies before the child called prctl
    os.close(write)
    os.waitpid(middle, 0)
    chunks = []
    while True:
        chunk = os.read(read, 1024)
        if not chunk:
            break
        chunks.append(chunk)
    print(b"".join(chunks).decode() or "exited", end="")
''')


def test_embedded_child_whose_parent_died_before_prctl_exits_at_once() -> None:
    # Given an embedded worker child whose parent dies before it reaches its first statement
    # When the child then runs what embedded children run first (_die_with_parent)
    result = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=60)
    # Then it ends there: nothing after that call runs (the pipe closes without a word)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exited", f"the orphaned child went on: {result.stdout!r}"


# -- item 7: a dead owner's lease is taken over at once ------------------------------------

def test_owner_names_carry_host_pid_and_start_time() -> None:
    # Given this process's lease owner name
    keeper = LeaseKeeper.__new__(LeaseKeeper)
    keeper._process = None
    name = keeper.process
    # Then it is host, pid and start time, and this process is alive by it
    assert name == f"{HOST}:{os.getpid()}@{start_time(os.getpid())}"
    assert not owner_is_dead(f"{name}:1")
    # And a pid whose start time differs (a reused pid) is dead; another host never is
    assert owner_is_dead(f"{HOST}:{os.getpid()}@1:1")
    assert not owner_is_dead(f"{HOST}-elsewhere:999999999@1:1")
    assert not owner_is_dead("a") and not owner_is_dead(None)


def test_lease_of_a_dead_owner_on_this_host_is_taken_over_at_once(store: StateStore) -> None:
    # Given a live 30 s lease held by a process of this host that has since died
    dead = _dead_owner()
    held = store.acquire_lease("clean:r:0:0", dead, 30)
    assert held is not None
    keeper = LeaseKeeper(store, ttl=30)
    # When a keeper asks for it
    started = time.monotonic()
    with keeper.hold("clean:r:0:0") as fence:
        # Then it has it at once, with a larger fencing token, counted as a retry
        assert time.monotonic() - started < 1
        assert fence.token > held.token
        lease = store.get_lease("clean:r:0:0")
        assert lease is not None and lease.taken_by == keeper.owner() and lease.retry_count == 1
    # And the dead owner cannot renew or release it any more
    assert not store.renew_lease("clean:r:0:0", dead, held.token, 30)


def test_lease_of_a_live_owner_or_another_host_is_not_taken(store: StateStore) -> None:
    # Given live leases held by a live process of this host and by an owner of another host
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        store.acquire_lease("clean:r:0:1", f"{process_name(sleeper.pid)}:7", 30)
        store.acquire_lease("clean:r:0:2", f"{HOST}-elsewhere:{sleeper.pid + 10**6}@1:7", 30)
        keeper = LeaseKeeper(store, ttl=30)
        # When a keeper asks for them, Then both are busy
        for key in ("clean:r:0:1", "clean:r:0:2"):
            with pytest.raises(LeaseBusy):
                with keeper.hold(key):
                    pass
        # And take_from with a holder that is not the current one changes nothing
        assert store.acquire_lease("clean:r:0:1", "x", 30, take_from="someone else") is None
    finally:
        sleeper.kill()
        sleeper.wait()


ORDERS = 60_000


def _orders_project(workdir: Path) -> None:
    """60,000 orders and the user pipeline of tests.test_cli over them."""
    from tests.test_cli import _user_pipeline

    lines = ["order_id,amount,sku"] + [f"{i},{i * 1.5},sku{i % 7}" for i in range(ORDERS)]
    (workdir / "orders.csv").write_text("\n".join(lines) + "\n")
    _user_pipeline(workdir)


def _orders_once(workdir: Path) -> None:
    loaded = pd.read_parquet(workdir / "out" / "orders")
    assert len(loaded) == ORDERS and sorted(loaded["order_id"]) == list(range(ORDERS))


@pytest.mark.slow
def test_embedded_resume_after_sigkill_does_not_wait_out_the_lease(tmp_path: Path) -> None:
    # Given `etl run` over 60,000 orders with 2 worker processes and a 30 s lease TTL
    _orders_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(PYTHONPATH=str(tmp_path), ETL_LEASE_TTL="30")
    command = [*ETL, "run", "-p", "mypipes:orders", "--shards", "8", "--batch-size", "500",
               "--processes", "2", "--no-progress"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # When it is SIGKILLed mid-run, its children holding leases
    assert _wait_for(lambda: rows_loaded(tmp_path) > 10_000 or process.poll() is not None, 120,
                     step=0.01)
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    # Then its children are gone within a few seconds
    assert _wait_for(lambda: not any(alive(pid) for pid in workers), 5)
    # And the same command resumes and completes well within the lease TTL
    started = time.monotonic()
    resumed = subprocess.run(command, cwd=tmp_path, env=env, text=True, capture_output=True,
                             timeout=300)
    elapsed = time.monotonic() - started
    print(f"embedded resume after SIGKILL: {elapsed:.1f} s (lease TTL 30 s)")
    assert resumed.returncode == 0, resumed.stderr
    assert elapsed < 15, f"the resume took {elapsed:.1f} s: it waited out dead owners' leases"
    _orders_once(tmp_path)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_worker_sigkilled_mid_run_is_taken_over_within_seconds(kind: str, tmp_path: Path) -> None:
    # Given two warm workers on `kind` with default settings (lease TTL 30 s, the Redis
    # broker's default heartbeat) working a run of 60,000 orders
    broker_url(kind)  # skip (or fail under CI) when the broker is down
    _orders_project(tmp_path)
    # When one of them is SIGKILLed while it holds leases
    measured = takeover(kind, tmp_path, give_up=45, pipeline="mypipes:orders", shards=8,
                        batch_size=500, kill_after=5_000)
    # Then the other finishes its tasks within seconds, and the run loads every row once
    print(f"{kind}: takeover after a worker SIGKILL: {measured.seconds:.2f} s "
          f"({len(measured.held)} task(s))")
    assert measured.seconds < 15, f"takeover took {measured.seconds:.1f} s"
    assert measured.completed
    _orders_once(tmp_path)


# -- item 8: a refused login ends `etl worker` ----------------------------------------------

@pytest.mark.services
@pytest.mark.parametrize("processes", ["1", "2"])
def test_worker_with_a_wrong_rabbitmq_password_exits_3_with_one_line(
        tmp_path: Path, processes: str) -> None:
    # Given a RabbitMQ URL with a wrong password
    broker_url("rabbitmq")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_BROKER_URL="amqp://guest:wrong-password@127.0.0.1:5672/%2F",
               ETL_QUEUE="test-recovery-refused")
    # When `etl worker` starts
    try:
        result = subprocess.run([*ETL, "worker", "--processes", processes], cwd=tmp_path,
                                env=env, text=True, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("etl worker with a refused login did not exit")
    # Then it ends with exit status 3 and one line that names the refusal, password masked
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ACCESS_REFUSED" in lines[0] and "wrong-password" not in result.stderr
