"""Embedded mode's inline steps: a batch's clean and load, and the shard's next batches, run
in the delivery of its fetch, each under its own lease, with a result record of its own; a
step that cannot run there goes on as its own message."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from etl.core.names import task_key
from etl.pipeline import Pipeline, RetryPolicy
from etl.runtime import inline
from etl.runtime.actors import declare_actors
from etl.runtime.context import ContextCache, RunContext
from etl.runtime.embedded import in_process
from etl.runtime.leases import LeaseKeeper
from etl.runtime.runs import find_pending, open_run
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from etl.stores.objects import open_objects
from etl.stores.state import open_state
from results import open_results
from shards import RangeShards

ROWS, BATCH = 100, 40  # one shard of three batches


class Delivered(Middleware):
    """Counts the messages a worker delivered, by actor, and those rejected (dead letters)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        self.count[message.actor_name] += 1

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.rejected[message.actor_name] += 1


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_state(f"sqlite:///{tmp_path}/state.db")
    yield store
    store.close()


def _pipeline(tmp_path: Path, sink: ParquetSink | None = None, retries: int = 2) -> Pipeline:
    source = tmp_path / "rows.csv"
    source.write_text("id,v\n" + "".join(f"{i},{i * 2}\n" for i in range(ROWS)))
    return Pipeline(name="inline", source=FileSource(str(source)),
                    sink=sink or ParquetSink(str(tmp_path / "out")), key=["id"],
                    shards=RangeShards("id", 1), batch_size=BATCH,
                    retry=RetryPolicy(max_retries=retries, min_backoff_ms=10, max_backoff_ms=50))


def _work(tmp_path: Path, state: Any, pipeline: Pipeline, *, before: Any = None,
          lease_ttl: float = 30.0) -> tuple[RunContext, Delivered, Any]:
    """Open a run and work it on a StubBroker with inline actors, as embedded mode does;
    `before(ctx)` runs once the run exists, before any message is sent."""
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    run, _ = open_run(state, pipeline, spec="x:y")
    ctx = RunContext.build(run, pipeline, state, open_objects(f"file://{tmp_path}/objects"))
    in_process(ctx)
    if before is not None:
        before(ctx)
    broker = StubBroker()
    broker.emit_after("process_boot")
    delivered = Delivered()
    broker.add_middleware(delivered)
    contexts = ContextCache()
    contexts.register(ctx)
    actors = declare_actors(broker, contexts, results=results, routed=False, inline=True,
                            leases=LeaseKeeper(state, ttl=lease_ttl))
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        actors.send_batch(run.run_id, 0, 0)
        broker.join("etl", timeout=30_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    return ctx, delivered, results


def _records(results: Any, run_id: str) -> dict[str, list[Any]]:
    steps: dict[str, list[Any]] = {}
    for job in results.list(run_id=run_id, limit=1000):
        steps.setdefault(job.function, []).append(job)
    return steps


@pytest.mark.parametrize("chain_s, messages", [(inline.CHAIN_S, 1), (0.0, 3)])
def test_a_shard_travels_as_one_message_and_each_step_has_its_record(
        tmp_path: Path, state, monkeypatch, chain_s: float, messages: int) -> None:  # type: ignore[no-untyped-def]
    # Given a run of one shard of three batches, worked by inline actors that chain the
    # shard's batches for CHAIN_S seconds (0: each batch is a message of its own)
    monkeypatch.setattr(inline, "CHAIN_S", chain_s)
    ctx, delivered, results = _work(tmp_path, state, _pipeline(tmp_path))
    # Then every row is loaded once
    checkpoint = state.get_checkpoint(ctx.run_id, 0)
    assert checkpoint.complete and checkpoint.rows_loaded == ROWS and checkpoint.batches_loaded == 3
    assert find_pending(state, ctx.run_id).total == 0
    # And only fetches were delivered as messages: the shard's first, or one per batch
    assert delivered.count == Counter({"etl_fetch": messages})
    # And each batch's fetch, clean and load has a completed record of its own
    steps = _records(results, ctx.run_id)
    for function in ("etl_fetch", "etl_clean", "etl_load"):
        jobs = sorted(steps[function], key=lambda j: j.args[2])
        assert [j.args[1:] for j in jobs] == [[0, 0], [0, 1], [0, 2]]
        assert all(j.status == "completed" for j in jobs)
    assert sum(j.result["rows"] for j in steps["etl_load"]) == ROWS
    # And a step's record starts once the one before it in the batch ended
    by_batch = {(f, j.args[2]): j for f, jobs in steps.items() for j in jobs}
    for batch in range(3):
        fetch, clean, load = (by_batch[(f"etl_{s}", batch)] for s in ("fetch", "clean", "load"))
        assert fetch.completed_at <= clean.started_at <= clean.completed_at <= load.started_at


def test_a_later_step_whose_lease_is_held_elsewhere_goes_on_as_its_own_message(tmp_path: Path, state) -> None:  # type: ignore[no-untyped-def]
    # Given another worker holding the lease of batch 1's clean for a second
    def hold(ctx: RunContext) -> None:
        assert state.acquire_lease(task_key("clean", ctx.run_id, 0, 1), "elsewhere:1:1", ttl=1.0)

    # When the shard is worked by inline actors
    ctx, delivered, results = _work(tmp_path, state, _pipeline(tmp_path), before=hold,
                                    lease_ttl=1.0)
    # Then that clean was deferred as a message, and once the lease lapsed it and its load ran
    checkpoint = state.get_checkpoint(ctx.run_id, 0)
    assert checkpoint.complete and checkpoint.rows_loaded == ROWS and checkpoint.batches_loaded == 3
    assert delivered.count["etl_clean"] == 1 and delivered.count["etl_load"] == 0
    steps = _records(results, ctx.run_id)
    [clean] = [j for j in steps["etl_clean"] if j.args[2] == 1]
    assert clean.status == "completed"
    statuses = [t.status for t in clean.history]
    assert statuses[:4] == ["pending", "queued", "in_progress", "retrying"]
    assert statuses[-1] == "completed"
    assert any("deferred: lease held by elsewhere:1:1" in (t.note or "") for t in clean.history)
    assert len(steps["etl_load"]) == 3


class FailFirstWrite(ParquetSink):
    """A Parquet sink whose first write of batch 1 raises a connection error; it counts
    the writes of each batch."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writes: Counter[int] = Counter()

    def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int) -> int:
        self.writes[batch] += 1
        if batch == 1 and self.writes[batch] == 1:
            raise ConnectionError("sink not reachable")
        return super().write_parquet(data, run_id=run_id, shard=shard, batch=batch)


def test_a_later_step_that_raises_is_retried_as_its_own_message_this_attempt_counted(tmp_path: Path, state) -> None:  # type: ignore[no-untyped-def]
    # Given a sink whose first write of batch 1 fails
    pipeline = _pipeline(tmp_path, sink=FailFirstWrite(str(tmp_path / "out")))
    # When the shard is worked by inline actors
    ctx, delivered, results = _work(tmp_path, state, pipeline)
    # Then the load was retried as a message and the run loaded every row once
    checkpoint = state.get_checkpoint(ctx.run_id, 0)
    assert checkpoint.complete and checkpoint.rows_loaded == ROWS
    assert delivered.count["etl_load"] == 1
    # And its record reads as a retried message's: the error, one retry counted
    [load] = [j for j in _records(results, ctx.run_id)["etl_load"] if j.args[2] == 1]
    assert [t.status for t in load.history] == [
        "pending", "queued", "in_progress", "retrying", "queued", "in_progress", "completed"]
    assert load.error_type == "ConnectionError" and load.retry_count == 1
    # And the shard's last error says which step and batch failed first
    assert "load batch 1" in (checkpoint.last_error or "")


def test_a_later_step_that_fails_for_good_is_failed_at_once_and_not_run_again(tmp_path: Path, state) -> None:  # type: ignore[no-untyped-def]
    # Given a run without retries whose sink fails its first write of batch 1
    sink = FailFirstWrite(str(tmp_path / "out"))
    # When the shard is worked by inline actors
    ctx, delivered, results = _work(tmp_path, state, _pipeline(tmp_path, sink=sink, retries=0))
    # Then that load ran once, failed, and is the run's one dead letter
    assert sink.writes[1] == 1
    assert delivered.rejected == Counter({"etl_load": 1}) and delivered.count["etl_load"] == 0
    [load] = [j for j in _records(results, ctx.run_id)["etl_load"] if j.args[2] == 1]
    assert load.status == "failed" and load.error_type == "ConnectionError"
    assert load.retry_count == 0
    # And the error log and the shard say so; the other batches are loaded
    [error] = state.list_errors(ctx.run_id)
    assert (error.stage, error.batch, error.context["attempts"]) == ("load", 1, 1)
    checkpoint = state.get_checkpoint(ctx.run_id, 0)
    assert checkpoint.status == "failed" and not checkpoint.complete
    assert checkpoint.batches_loaded == 2 and find_pending(state, ctx.run_id).load == [(0, 1)]
