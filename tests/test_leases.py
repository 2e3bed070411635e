"""Leases held by the actors: one owner at a time, kept alive by the heartbeat, deferral of a
message whose task is busy, and no commit through a lost lease."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from etl.runtime.actors import declare_actors
from etl.runtime.context import ContextCache, RunContext
from etl.core.errors import LeaseLost
from etl.core.names import fetch_key, step_key, task_key
from etl.runtime.leases import LeaseBusy, LeaseKeeper
from etl.stores.objects import open_objects
from etl.pipeline import Pipeline
from etl.runtime.runs import find_pending, open_run
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from etl.stores.state import open_state, task_fingerprint
from shards import RangeShards


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_state(f"sqlite:///{tmp_path}/state.db")
    yield store
    store.close()


def _in_thread(fn):  # type: ignore[no-untyped-def]
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return box


def test_task_keys_are_a_fetch_lane_per_shard_and_one_key_per_batch_step() -> None:
    assert task_key("fetch", "r", 3, 7) == fetch_key("r", 3) == "fetch:r:3"
    assert task_key("clean", "r", 3, 7) == step_key("clean", "r", 3, 7) == "clean:r:3:7"
    assert task_key("load", "r", 3, 7) != task_key("clean", "r", 3, 7)


def test_a_held_lease_is_busy_for_other_threads_and_free_after_the_block(state) -> None:  # type: ignore[no-untyped-def]
    keeper = LeaseKeeper(state, ttl=30)
    # Given this thread holds a task's lease
    with keeper.hold("clean:r:0:0") as fence:
        assert fence.owner == keeper.owner() and fence.token == 1
        # When another thread asks for it, Then it is told who holds it and for how long
        box = _in_thread(lambda: keeper.hold("clean:r:0:0").__enter__())
        busy = box["error"]
        assert isinstance(busy, LeaseBusy)
        assert busy.holder == keeper.owner() and 25 < busy.seconds_left <= 30
    # When the block ends, Then the lease is free and the next owner gets a new token
    lease = state.get_lease("clean:r:0:0")
    assert lease is not None and lease.taken_by is None
    box = _in_thread(lambda: keeper.hold("clean:r:0:0").__enter__())
    assert box["value"].token == 2  # type: ignore[union-attr]
    keeper.close()


def test_the_heartbeat_keeps_a_lease_alive_past_its_ttl(state) -> None:  # type: ignore[no-untyped-def]
    keeper = LeaseKeeper(state, ttl=0.6)
    # Given a lease held for three TTLs
    with keeper.hold("load:r:1:0") as fence:
        time.sleep(1.8)
        # Then it is still ours (renewed every TTL/3) and commits through it are accepted
        lease = state.get_lease("load:r:1:0")
        assert lease is not None and lease.taken_by == fence.owner and lease.token == fence.token
        assert state.renew_lease("load:r:1:0", fence.owner, fence.token, 0.6)
    keeper.close()


def test_a_lease_its_commit_released_is_neither_renewed_nor_released_again(
        state, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from etl.stores.state import RunRecord

    state.create_run(RunRecord(run_id="r", pipeline="p", plan="x", shards=1))
    state.init_checkpoints("r", 1)
    run_id, keeper = "r", LeaseKeeper(state, ttl=0.6)
    # Given a clean holds its lease and commits, asking the commit to release it
    with caplog.at_level(logging.WARNING, logger="etl.runtime.leases"):
        with keeper.hold(f"clean:{run_id}:0:0") as fence:
            assert state.complete_stage(run_id, 0, 0, "clean", {"rows_cleaned": 1}, fence=fence,
                                        release=True)
            assert fence.released
            # When another owner takes the freed lease while the heartbeat beats (TTL/3)
            other = state.acquire_lease(f"clean:{run_id}:0:0", "other", ttl=30)
            assert other is not None and other.token == fence.token + 1
            time.sleep(0.5)
        # Then the heartbeat said nothing of a lost lease, and the block's end left the
        # other owner's lease alone
        assert "was lost" not in caplog.text
    lease = state.get_lease(f"clean:{run_id}:0:0")
    assert lease is not None and (lease.taken_by, lease.token) == ("other", other.token)
    keeper.close()


def test_loads_queued_on_one_destination_take_turns(state) -> None:  # type: ignore[no-untyped-def]
    # Given a keeper, and 4 threads that each hold the "commit:t" queue for 50 ms
    keeper = LeaseKeeper(state, ttl=30)
    inside, overlaps, done = [], [], []
    guard = threading.Lock()

    def load(number: int) -> None:
        with keeper.queue_on("commit:t", patience=30):
            with guard:
                inside.append(number)
                overlaps.append(len(inside))
            time.sleep(0.05)
            with guard:
                inside.remove(number)
        done.append(number)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then every one got its turn, and never two at once
    assert sorted(done) == [0, 1, 2, 3] and max(overlaps) == 1
    # And a queue held longer than the patience of a newcomer makes it LeaseBusy
    with keeper.hold("commit:t"):
        started = time.monotonic()
        box = _in_thread(lambda: keeper.queue_on("commit:t", patience=0.3).__enter__())
        assert isinstance(box.get("error"), LeaseBusy)
        assert time.monotonic() - started >= 0.3


def test_a_stalled_owner_is_taken_over_and_cannot_commit(state) -> None:  # type: ignore[no-untyped-def]
    # Given a run, and owner a holding shard 0's fetch lane with no heartbeat (stalled)
    from etl.stores.state import RunRecord

    state.create_run(RunRecord(run_id="r", pipeline="p", plan="x", shards=1))
    state.init_checkpoints("r", 1)
    stalled = LeaseKeeper(state, ttl=0.3)
    stalled._ensure_heartbeat = lambda: None  # type: ignore[method-assign]
    with stalled.hold(fetch_key("r", 0)) as old:
        time.sleep(0.4)
        # When owner b's keeper takes the expired lease over
        other = LeaseKeeper(state, ttl=30)
        box = _in_thread(lambda: other.hold(fetch_key("r", 0)).__enter__())
        assert box["value"].token > old.token  # type: ignore[union-attr]
        # Then a's commit is refused and changes nothing
        with pytest.raises(LeaseLost):
            state.finish_fetch("r", 0, 0, fence=old)
        assert not state.get_checkpoint("r", 0).fetch_done


def _pipeline(tmp_path: Path) -> Pipeline:
    source = tmp_path / "rows.csv"
    source.write_text("id,v\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    return Pipeline(name="leased", source=FileSource(str(source)),
                    sink=ParquetSink(str(tmp_path / "out")), key=["id"],
                    shards=RangeShards("id", 1), batch_size=40)


def test_a_message_whose_task_is_leased_elsewhere_is_deferred_then_done_once(tmp_path: Path, state) -> None:  # type: ignore[no-untyped-def]
    # Given a run, and another worker holding the lease of shard 0's fetch lane
    pipeline = _pipeline(tmp_path)
    run, _ = open_run(state, pipeline, spec="x:y")
    ctx = RunContext.build(run, pipeline, state, open_objects(f"file://{tmp_path}/objects"))
    other = state.acquire_lease(fetch_key(run.run_id, 0), "elsewhere:1:1", ttl=1.5)
    assert other is not None
    broker = StubBroker()
    broker.emit_after("process_boot")
    contexts = ContextCache()
    contexts.register(ctx)
    actors = declare_actors(broker, contexts, leases=LeaseKeeper(state, ttl=1.5))
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        # When the shard's first batch is sent
        actors.send_batch(run.run_id, 0, 0)
        time.sleep(0.5)
        # Then nothing is fetched while the other owner holds the lane
        assert state.get_checkpoint(run.run_id, 0).batches_fetched == 0
        # And once its lease lapses, the deferred message does the work, every batch once
        broker.join("etl", timeout=30_000)
        worker.join()
    finally:
        worker.stop()
    checkpoint = state.get_checkpoint(run.run_id, 0)
    assert checkpoint.complete and checkpoint.rows_loaded == 100 and checkpoint.batches_loaded == 3
    assert find_pending(state, run.run_id).total == 0
    assert all(state.is_done(task_fingerprint("load", run.run_id, 0, b)) for b in range(3))
