"""The embedded runner end to end, in process: StubBroker, worker threads, real SQLite and
real files. Small generated tables keep these fast; the crash tests use the full demo."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

import etl
from etl.runner import RunOutcome
from etl.runtime.actors import declare_actors
from etl.runtime.context import ContextCache, RunContext
from etl.runtime.quarantine import read as read_quarantine
from etl.stores import Stores
from etl.stores.objects import open_objects
from etl.pipeline import Pipeline, RetryPolicy
from etl.runtime.runs import find_pending
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from etl.stores.state import open_state
from shards import HashShards, RangeShards
from stages import StageResult
from stages.base import REASON_COLUMN


@dataclass
class RejectOdd:
    """Test stage: rejects rows whose id is odd and a multiple of 7."""

    name: str = "reject_odd"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        bad = (frame["id"] % 2 == 1) & (frame["id"] % 7 == 0)
        return StageResult(kept=frame[~bad], rejected=frame[bad].assign(**{REASON_COLUMN: "odd x7"}))


@dataclass
class Poison:
    """Test stage: raises on any batch holding the id `poison`."""

    poison: int
    name: str = "poison"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        if (frame["id"] == self.poison).any():
            raise ValueError(f"poisoned row {self.poison}")
        return StageResult(kept=frame)


@dataclass
class MixTypes:
    """Test stage: gives the batch holding id `at` a column of numbers and text together."""

    at: int
    name: str = "mix_types"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        if (frame["id"] == self.at).any():
            mixed = pd.Series([1 if i % 2 else "one" for i in range(len(frame))],
                              index=frame.index, dtype=object)
            return StageResult(kept=frame.assign(mixed=mixed))
        return StageResult(kept=frame)


def _pipeline(tmp_path: Path, rows: int = 5000, **changes) -> Pipeline:  # type: ignore[no-untyped-def]
    source = tmp_path / "src.parquet"
    if not source.exists():
        pd.DataFrame({"id": range(rows), "value": [i * 1.5 for i in range(rows)]}).to_parquet(source)
    base = Pipeline(name="t", source=FileSource(str(source)), sink=ParquetSink(str(tmp_path / "sink")),
                    key=["id"], shards=HashShards(["id"], 6), stages=[RejectOdd()], batch_size=300,
                    retry=RetryPolicy(max_retries=1, min_backoff_ms=10, max_backoff_ms=20))
    return replace(base, **changes)


def _stores(tmp_path: Path) -> Stores:
    return Stores(open_state(f"sqlite:///{tmp_path}/state.db"),
                  open_objects(f"file://{tmp_path}/objects"))


def _run(stores: Stores, pipeline: Pipeline, *, processes: int = 1, threads: int = 2,
         run_id: str | None = None) -> RunOutcome:
    """The run through the runner, as `etl run` does it, on these stores."""
    return etl.run(pipeline, spec="tests:unused", stores=stores, processes=processes,
                   threads=threads, run_id=run_id)


@pytest.mark.parametrize("plan,processes", [(HashShards(["id"], 6), 1), (RangeShards("id", 4), 1),
                                            (HashShards(["id"], 6), 2)])
def test_embedded_run_loads_every_clean_row_once(tmp_path: Path, plan, processes: int) -> None:  # type: ignore[no-untyped-def]
    # Given a 5,000-row source, a stage rejecting some rows, and small batches
    pipeline = _pipeline(tmp_path, shards=plan)
    stores = _stores(tmp_path)
    # When the run is worked by one process with threads, or by two forked processes
    result = _run(stores, pipeline, threads=3, processes=processes)
    # Then it completes, and the sink holds exactly the kept rows, once each
    assert result.completed and result.dead_letters == 0
    sink = pipeline.sink.read_all()
    expected = [i for i in range(5000) if not (i % 2 == 1 and i % 7 == 0)]
    assert sorted(sink["id"].tolist()) == expected
    # And the counters add up: rows in = loaded + quarantined
    cps = stores.state.list_checkpoints(result.run_id)
    assert sum(c.rows_fetched for c in cps) == 5000
    assert sum(c.rows_loaded for c in cps) == len(expected)
    assert sum(c.rows_quarantined for c in cps) == 5000 - len(expected)
    assert all(c.complete and c.status == "done" for c in cps)
    assert stores.state.get_run(result.run_id).status == "completed"  # type: ignore[union-attr]
    # And every quarantined row is kept with its reason
    kept = [read_quarantine(stores.state, stores.objects, result.run_id, p.shard, p.batch)
            for p in stores.state.list_payloads(result.run_id)]
    rows = pd.concat([frame for frame in kept if frame is not None], ignore_index=True)
    assert len(rows) == 5000 - len(expected) and rows["_reason"].notna().all()


def test_redelivering_every_message_of_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    # Given a finished run
    pipeline = _pipeline(tmp_path)
    stores = _stores(tmp_path)
    result = _run(stores, pipeline)
    assert result.completed
    run = stores.state.get_run(result.run_id)
    assert run is not None
    ctx = RunContext.build(run, pipeline, stores.state, stores.objects)
    before = [(c.shard, c.rows_loaded, c.batches_loaded, c.rows_quarantined)
              for c in ctx.state.list_checkpoints(ctx.run_id)]
    files_before = {p.name: p.stat().st_mtime_ns for p in Path(tmp_path / "sink").iterdir()}
    done_before = ctx.state.count_done(ctx.run_id)
    # When every fetch, clean and load message is delivered again
    from dramatiq import Worker
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.emit_after("process_boot")
    contexts = ContextCache()
    contexts.register(ctx)
    actors = declare_actors(broker, contexts)
    for payload in ctx.state.list_payloads(ctx.run_id):
        actors.send_batch(ctx.run_id, payload.shard, payload.batch)
    worker = Worker(broker, worker_threads=2)
    worker.start()
    broker.join("etl")
    worker.stop()
    # Then counts, dedup ledger and sink files are unchanged (every step hit the ledger)
    after = [(c.shard, c.rows_loaded, c.batches_loaded, c.rows_quarantined)
             for c in ctx.state.list_checkpoints(ctx.run_id)]
    assert after == before
    assert ctx.state.count_done(ctx.run_id) == done_before
    assert {p.name: p.stat().st_mtime_ns for p in Path(tmp_path / "sink").iterdir()} == files_before


def test_poison_batch_fails_alone_and_is_logged_then_resume_finishes(tmp_path: Path) -> None:
    # Given a stage that raises on the batch holding id 1234
    pipeline = _pipeline(tmp_path, stages=[Poison(1234)])
    stores = _stores(tmp_path)
    # When the run is worked
    result = _run(stores, pipeline)
    # Then that batch is dead-lettered, every other shard finishes, and the error is logged
    assert not result.completed and result.dead_letters == 1
    errors = stores.state.list_errors(result.run_id)
    assert len(errors) == 1
    error = errors[0]
    assert error.stage == "clean" and error.error_type == "BatchError"
    assert f"shard {error.shard} batch {error.batch}" in error.message
    assert "poisoned row 1234" in error.message and "raw/shard=" in error.message
    assert "Traceback" in error.traceback
    cps = {c.shard: c for c in stores.state.list_checkpoints(result.run_id)}
    assert cps[error.shard].status == "failed" and not cps[error.shard].complete
    assert sum(c.complete for c in cps.values()) == len(cps) - 1
    assert stores.state.get_run(result.run_id).status == "failed"  # type: ignore[union-attr]
    pending = find_pending(stores.state, result.run_id)
    assert pending.clean == [(error.shard, error.batch)]

    # When the stage is fixed and the same run resumed
    fixed = replace(pipeline, stages=[])
    resumed = _run(stores, fixed)
    assert resumed.run_id == result.run_id and resumed.opened == "resumed"
    # Then the run completes with every row loaded once
    assert resumed.completed
    assert sorted(fixed.sink.read_all()["id"].tolist()) == list(range(5000))


@pytest.mark.parametrize("sink", ["parquet", "sql"])
def test_a_batch_arrow_cannot_type_fails_its_clean_whatever_the_sink(tmp_path: Path,
                                                                       sink: str) -> None:
    # Given a stage that leaves one batch with a column of numbers and text together, and a
    # sink that takes Parquet files or one that takes frames (no Parquet is written for it)
    from etl.sinks.sql import SqlSink

    target = (ParquetSink(str(tmp_path / "sink")) if sink == "parquet"
              else SqlSink(f"sqlite:///{tmp_path}/sink.db", table="t", key=["id"]))
    pipeline = _pipeline(tmp_path, stages=[MixTypes(1234)], sink=target)
    stores = _stores(tmp_path)
    # When the run is worked
    result = _run(stores, pipeline)
    # Then that batch fails in its clean, saying why and what to do, and loads nothing
    assert not result.completed and result.dead_letters == 1
    [error] = stores.state.list_errors(result.run_id)
    assert error.stage == "clean" and "a column mixes types" in error.message
    assert "CastSchema" in error.message
    loaded = set(target.read_all()["id"].tolist())
    assert 1234 not in loaded and len(loaded) < 5000


def test_transient_failure_is_retried_and_succeeds(tmp_path: Path) -> None:
    # Given a sink that fails the first write of each batch (a transient outage)
    pipeline = _pipeline(tmp_path, rows=900, stages=[], batch_size=300)
    sink = pipeline.sink
    calls: dict[tuple[int, int], int] = {}
    original = sink.write_parquet

    def flaky_write(data, *, run_id, shard, batch):  # type: ignore[no-untyped-def]
        calls[(shard, batch)] = calls.get((shard, batch), 0) + 1
        if calls[(shard, batch)] == 1:
            raise ConnectionError("sink not reachable (transient)")
        return original(data, run_id=run_id, shard=shard, batch=batch)

    sink.write_parquet = flaky_write  # type: ignore[method-assign]
    # When the run is worked
    result = _run(_stores(tmp_path), pipeline)
    # Then every batch was written on its second attempt and the run completed
    assert result.completed and result.dead_letters == 0
    assert calls and all(n == 2 for n in calls.values())
    assert sorted(sink.read_all()["id"].tolist()) == list(range(900))


def test_embedded_run_on_the_mongo_state_store(tmp_path: Path, mongo_client, mongo_db_name: str) -> None:  # type: ignore[no-untyped-def]
    # Given the MongoDB state store (mongomock, or a real server with ETL_TEST_MONGO_URL)
    from etl.stores.state.mongo import MongoStateStore

    state = MongoStateStore("mongodb://unused/x", client=mongo_client, database=mongo_db_name)
    pipeline = _pipeline(tmp_path)
    stores = Stores(state, open_objects(f"file://{tmp_path}/objects"))
    # When the run is worked, then worked again (the run is complete: every step is settled)
    first = _run(stores, pipeline, threads=3)
    assert first.completed
    assert _run(stores, pipeline, threads=3).completed
    # Then the sink holds each kept row once and the counters add up
    expected = [i for i in range(5000) if not (i % 2 == 1 and i % 7 == 0)]
    assert sorted(pipeline.sink.read_all()["id"].tolist()) == expected
    cps = state.list_checkpoints(first.run_id)
    assert sum(c.rows_loaded for c in cps) == len(expected)
    assert sum(c.rows_loaded + c.rows_quarantined for c in cps) == 5000
    assert state.get_run(first.run_id).status == "completed"  # type: ignore[union-attr]
    mongo_client.drop_database(mongo_db_name)


def test_shards_are_shared_out_by_their_rows() -> None:
    # Given the demo's 20 shard sizes (rows) and two processes
    from etl.runtime.embedded import share_out

    sizes = [14670, 17954, 16959, 18335, 16923, 17745, 15367, 16746, 18977, 15509, 14927,
             17066, 14427, 17519, 17370, 16343, 16333, 19770, 18096, 15740]
    # When they are shared out
    owned = share_out(range(20), 2, sizes)
    # Then every shard has one owner, and the rows differ by less than the smallest shard
    assert sorted(s for part in owned for s in part) == list(range(20))
    loads = [sum(sizes[s] for s in part) for part in owned]
    assert abs(loads[0] - loads[1]) < min(sizes), loads
    # (shard % 2 gave 164,049 and 172,727)
    assert abs(loads[0] - loads[1]) < abs(sum(sizes[0::2]) - sum(sizes[1::2]))
    # And each share is in the order to work it, largest first
    assert all(sizes[a] >= sizes[b] for part in owned for a, b in zip(part, part[1:]))
    # And only the shards asked for are shared; without sizes, by shard number
    assert share_out({3, 4, 7}, 2, sizes) == [[3], [4, 7]]  # 18,335 | 16,923 + 16,746
    assert share_out({3, 4, 7}, 2) == [[4], [3, 7]]


def test_a_process_done_with_its_share_takes_the_shards_not_begun_yet() -> None:
    # Given shard claims shared by two processes, each with its own share (largest first)
    import multiprocessing

    from etl.runtime.claims import ShardClaims

    claims = ShardClaims(6)
    first, second = [0, 2, 4], [1, 3, 5]
    # When the first process claims its whole share and one more, while the second has
    # begun its own first shard
    assert claims.next(first, second) == 0
    assert claims.next(second, first) == 1
    assert [claims.next(first, second) for _ in range(3)] == [2, 4, 5]
    # Then it took the other's shard not begun yet that is last in line (smallest), the
    # second goes on with what is left, and no shard is claimed twice
    assert [claims.next(second, first) for _ in range(2)] == [3, None]
    assert claims.next(first, second) is None

    # And a claim made in a forked process is seen by its parent (memory shared by forks)
    fork = multiprocessing.get_context("fork")
    shared = ShardClaims(3, context=fork)
    child = fork.Process(target=shared.claim, args=(1,))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert [shared.claim(s) for s in range(3)] == [True, False, True]


def test_a_run_whose_batches_another_process_fetched_ahead_still_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run whose pending work this process reads, and then another process (two
    # triggers of one backfill window) fetches the first two batches of every shard
    import etl.runtime.batches as steps
    import etl.runtime.embedded as embedded
    from etl.runtime.runs import open_run

    pipeline = _pipeline(tmp_path)
    stores = _stores(tmp_path)
    run, _ = open_run(stores.state, pipeline, spec="tests:unused")
    ctx = RunContext.build(run, pipeline, stores.state, stores.objects)
    stale = find_pending(stores.state, run.run_id)
    for shard, _batch in stale.fetch:
        steps.fetch(ctx, shard, 0)
        steps.fetch(ctx, shard, 1)
    answers = iter([stale])
    monkeypatch.setattr(embedded, "find_pending",
                        lambda state, run_id: next(answers, None) or find_pending(state, run_id))
    # When this process works the run from what it read (its fetches of batch 0 find them
    # done elsewhere, so they hand on no next batch)
    outcome = embedded.run_embedded(ctx, processes=1, threads=2)
    # Then it still works the run to its end, and every kept row is loaded once
    assert outcome.completed and outcome.dead_letters == 0
    expected = [i for i in range(5000) if not (i % 2 == 1 and i % 7 == 0)]
    assert sorted(pipeline.sink.read_all()["id"].tolist()) == expected


@pytest.mark.parametrize("batch_size,kept", [(5000, False), (300, True)])
def test_the_key_audit_keeps_keys_only_of_shards_of_several_batches(
        tmp_path: Path, batch_size: int, kept: bool) -> None:
    # Given a run whose process keeps the keys of the batches it cleans for the key audit
    import etl.runtime.batches as steps
    from etl.runtime.loaded_keys import LoadedKeys
    from etl.runtime.runs import open_run

    pipeline = _pipeline(tmp_path, batch_size=batch_size)
    stores = _stores(tmp_path)
    run, _ = open_run(stores.state, pipeline, spec="tests:unused")
    ctx = RunContext.build(run, pipeline, stores.state, stores.objects)
    ctx.staged_copies, ctx.loaded_keys = False, LoadedKeys()
    # When every batch of shard 0 is fetched, cleaned and loaded in turn
    batch, more = 0, True
    while more:
        more = steps.fetch(ctx, 0, batch).fetch_next
        steps.clean(ctx, 0, batch)
        steps.load(ctx, 0, batch)
        batch += 1
    # Then a shard of one batch keeps no key rows, one of several keeps them all; both are
    # vouched for, and the count is what the shard's files hold (ids are unique: none)
    assert (ctx.loaded_keys.rows > 0) is kept
    checkpoint = stores.state.get_checkpoint(run.run_id, 0)
    assert ctx.loaded_keys.counts(run.run_id, [checkpoint], ["id"]) == {0: 0}
    assert (checkpoint.batches_fetched > 1) is kept


class _OlderAudit(ParquetSink):
    """A key-auditing sink written before the audit was handed the workers' counts."""

    def repeated_keys(self, key, *, shard_columns=()):  # type: ignore[no-untyped-def, override]
        return 7


def test_a_key_audit_that_takes_no_counts_is_still_asked(tmp_path: Path) -> None:
    # Given a sink whose repeated_keys knows only the key and the shard columns
    pipeline = _pipeline(tmp_path, sink=_OlderAudit(str(tmp_path / "sink")))
    # When a run completes, Then its audit is called as it was, and its answer reported
    outcome = _run(_stores(tmp_path), pipeline)
    assert outcome.completed and outcome.keys_repeated == 7
