"""A duplicate step (a batch the dedup ledger already holds) is settled as skipped, recorded
as such, and after the ledger said so once, settled without reading it again; a step the
ledger does not hold is always worked, never settled from memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from etl.pipeline import Pipeline
from etl.runtime.actors import EtlActors, declare_actors
from etl.runtime.context import ContextCache, RunContext
from etl.runtime.runs import open_run
from etl.runtime.settled import SettledSteps
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from etl.stores.objects import open_objects
from etl.stores.state import open_state, task_fingerprint
from results import open_results
from results.middleware import ResultRecorder
from shards import RangeShards


def _pipeline(tmp_path: Path) -> Pipeline:
    source = tmp_path / "rows.csv"
    source.write_text("id,v\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    return Pipeline(name="dups", source=FileSource(str(source)),
                    sink=ParquetSink(str(tmp_path / "out")), key=["id"],
                    shards=RangeShards("id", 1), batch_size=40)


class _Ledger:
    """Counts the ledger reads of one fingerprint, passing them on to the real store."""

    def __init__(self, real: Callable[[str], bool], watched: str) -> None:
        self.real, self.watched, self.reads = real, watched, 0

    def __call__(self, fingerprint: str) -> bool:
        if fingerprint == self.watched:
            self.reads += 1
        return self.real(fingerprint)


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A new run (one shard of 100 rows in batches of 40), actors on a StubBroker recording
    results in SQLite, and a worker; the ledger reads of batch 0's load are counted."""
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    pipeline = _pipeline(tmp_path)
    run, _ = open_run(state, pipeline, spec="x:y")
    ledger = _Ledger(state.is_done, task_fingerprint("load", run.run_id, 0, 0))
    state.is_done = ledger  # type: ignore[method-assign]
    ctx = RunContext.build(run, pipeline, state, open_objects(f"file://{tmp_path}/objects"))
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    broker = StubBroker()
    broker.emit_after("process_boot")
    contexts = ContextCache()
    contexts.register(ctx)
    actors = declare_actors(broker, contexts, results=results)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield actors, ctx, ledger, results
    worker.stop()
    broker.close()
    state.close()


def _deliver(actors: EtlActors, *args: Any) -> dramatiq.Message:
    message = actors.load.send(*args)
    actors.load.broker.join("etl", timeout=30_000)
    return message


def _flush(actors: EtlActors) -> None:
    for middleware in actors.load.broker.middleware:
        if isinstance(middleware, ResultRecorder):
            middleware.flush()


def test_a_duplicate_load_is_settled_by_the_ledger_once_then_from_memory(world) -> None:  # type: ignore[no-untyped-def]
    actors, ctx, ledger, results = world
    # Given a batch whose load has not happened yet
    actors.send_batch(ctx.run_id, 0, 0)
    actors.fetch.broker.join("etl", timeout=30_000)
    # (the pipeline fetched the shard's batches and loaded them, batch 0 among them)
    assert ctx.state.get_checkpoint(ctx.run_id, 0).complete
    reads_while_working = ledger.reads
    assert reads_while_working >= 1  # its own load looked the ledger up, and was done
    # When its load is delivered three more times
    sent = [_deliver(actors, ctx.run_id, 0, 0) for _ in range(3)]
    # Then the ledger was read for the first duplicate only
    assert ledger.reads == reads_while_working + 1
    # And each duplicate is recorded completed, skipped by the dedup ledger
    _flush(actors)
    for message in sent:
        job = results.get(message.message_id)
        assert job is not None and job.status == "completed"
        assert job.result == {"skipped": "already loaded (dedup)"}
    # And nothing was loaded twice
    assert ctx.state.get_checkpoint(ctx.run_id, 0).rows_loaded == 100


def test_a_step_the_ledger_does_not_hold_is_worked_every_time_it_comes(world) -> None:  # type: ignore[no-untyped-def]
    actors, ctx, ledger, results = world
    # Given a run whose first batch is fetched and cleaned, but not loaded
    actors.fetch.send(ctx.run_id, 0, 0)  # alone: no pipeline piping it on to clean and load
    actors.fetch.broker.join("etl", timeout=30_000)
    actors.clean.send(ctx.run_id, 0, 0)
    actors.clean.broker.join("etl", timeout=30_000)
    assert not ledger.real(ledger.watched) and ledger.reads == 0
    # When its load is delivered
    message = _deliver(actors, ctx.run_id, 0, 0)
    # Then the ledger was asked (a "not done" answer is never remembered) and the batch loaded
    assert ledger.reads >= 1 and ledger.real(ledger.watched)
    _flush(actors)
    job = results.get(message.message_id)
    assert job is not None and job.status == "completed" and job.result == {"rows": 40}


def test_settled_steps_forget_the_oldest_beyond_their_limit() -> None:
    # Given a memory of two steps
    settled = SettledSteps(limit=2)
    # When three are added, one of them twice
    for step in [("load", "r", 0, 0), ("load", "r", 0, 1), ("load", "r", 0, 0), ("load", "r", 0, 2)]:
        settled.add(step)
    # Then the two newest are known and the oldest is forgotten (asked of the ledger again)
    assert len(settled) == 2
    assert ("load", "r", 0, 2) in settled and ("load", "r", 0, 1) in settled
    assert ("load", "r", 0, 0) not in settled
