"""One conformance suite for every state store: SQLite (real file) and MongoDB (mongomock,
or a real server when ETL_TEST_MONGO_URL is set). Each test is Given / When / Then."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from etl.state import ErrorRecord, RawPayload, RunRecord, StateStore, open_state, task_fingerprint
from etl.state.base import utcnow
from etl.state.mongo import MongoStateStore


@pytest.fixture(params=["sqlite", "mongo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "sqlite":
        yield open_state(f"sqlite:///{tmp_path}/state.db")
        return
    client = request.getfixturevalue("mongo_client")
    name = request.getfixturevalue("mongo_db_name")
    yield MongoStateStore("mongodb://unused/x", client=client, database=name)
    client.drop_database(name)


def _payload(batch: int, *, run: str = "r", shard: int = 0, rows: int = 10) -> RawPayload:
    return RawPayload(run_id=run, shard=shard, batch=batch, key=f"k/{shard}/{batch}", bytes=100,
                      sha256="ab" * 32, rows=rows, cursor_start=batch * 10 - 1 if batch else None,
                      cursor_end=batch * 10 + 9)


def _run(store: StateStore, run_id: str = "r", shards: int = 2, **kw) -> RunRecord:  # type: ignore[no-untyped-def]
    run = RunRecord(run_id=run_id, pipeline=kw.pop("pipeline", "p"), plan=kw.pop("plan", "hash(k)/2"),
                    shards=shards, params={"batch_size": 10, "plan": {"kind": "hash"}}, **kw)
    assert store.create_run(run)
    store.init_checkpoints(run_id, shards)
    return run


# -- runs ----------------------------------------------------------------------------------
def test_runs_are_created_once_and_found_newest_first(store: StateStore) -> None:
    # Given three runs of one pipeline and plan, created in order, the last one completed
    for i, name in enumerate(["a", "b", "c"]):
        _run(store, name, created_at=utcnow() + timedelta(seconds=i))
    store.set_run_status("c", "completed")
    # When the same run id is created again, Then it is refused and unchanged
    assert not store.create_run(RunRecord(run_id="a", pipeline="other", plan="x", shards=1))
    assert store.get_run("a").pipeline == "p"  # type: ignore[union-attr]
    # And the newest unfinished is b, the newest of all is c
    assert store.latest_run("p", "hash(k)/2").run_id == "b"  # type: ignore[union-attr]
    assert store.latest_run("p", "hash(k)/2", unfinished=False).run_id == "c"  # type: ignore[union-attr]
    assert store.latest_run("p", "other-plan") is None
    assert [r.run_id for r in store.list_runs(limit=2)] == ["c", "b"]
    assert store.get_run("b").params == {"batch_size": 10, "plan": {"kind": "hash"}}  # type: ignore[union-attr]
    assert store.get_run("nope") is None


# -- checkpoints ---------------------------------------------------------------------------
def test_init_checkpoints_is_idempotent_and_keeps_progress(store: StateStore) -> None:
    # Given a run whose shard 0 fetched a batch
    _run(store)
    assert store.record_fetch(_payload(0), exhausted=False)
    # When checkpoints are initialised again
    store.init_checkpoints("r", 2)
    # Then progress is kept and nothing is duplicated
    checkpoints = store.list_checkpoints("r")
    assert [c.shard for c in checkpoints] == [0, 1]
    assert checkpoints[0].batches_fetched == 1 and checkpoints[0].cursor == 9
    assert checkpoints[0].status == "running" and checkpoints[1].status == "pending"


def test_record_fetch_advances_exactly_once(store: StateStore) -> None:
    _run(store)
    # When batch 0 is recorded twice (a redelivered message)
    assert store.record_fetch(_payload(0), exhausted=False)
    assert not store.record_fetch(_payload(0), exhausted=False)
    # Then it is counted once
    cp = store.get_checkpoint("r", 0)
    assert (cp.batches_fetched, cp.rows_fetched, cp.cursor, cp.fetch_done) == (1, 10, 9, False)  # type: ignore[union-attr]
    # When a batch out of order is recorded, Then it does not advance the checkpoint
    assert not store.record_fetch(_payload(5), exhausted=False)
    assert store.get_checkpoint("r", 0).batches_fetched == 1  # type: ignore[union-attr]
    # When the last batch is recorded as exhausting the shard
    assert store.record_fetch(_payload(1), exhausted=True)
    cp = store.get_checkpoint("r", 0)
    assert (cp.batches_fetched, cp.rows_fetched, cp.cursor, cp.fetch_done) == (2, 20, 19, True)  # type: ignore[union-attr]
    # And each payload is stored once, in order
    assert [(p.shard, p.batch) for p in store.list_payloads("r")] == [(0, 0), (0, 1), (0, 5)]
    assert store.get_payload("r", 0, 1).cursor_end == 19  # type: ignore[union-attr]
    assert store.get_payload("r", 0, 9) is None


def test_finish_fetch_only_at_the_expected_batch(store: StateStore) -> None:
    _run(store)
    assert not store.finish_fetch("r", 1, 3)
    assert store.finish_fetch("r", 1, 0)
    assert not store.finish_fetch("r", 1, 0)
    cp = store.get_checkpoint("r", 1)
    assert cp.fetch_done and cp.complete and cp.status == "done"  # type: ignore[union-attr]


def test_complete_stage_counts_each_batch_once_and_marks_done(store: StateStore) -> None:
    # Given a shard with two fetched batches, the second exhausting it
    _run(store)
    store.record_fetch(_payload(0), exhausted=False)
    store.record_fetch(_payload(1), exhausted=True)
    # When each batch is cleaned and loaded, every call made twice
    for batch in (0, 1):
        for _ in range(2):
            store.complete_stage("r", 0, batch, "clean", {"rows_cleaned": 8, "rows_quarantined": 2})
        assert store.get_checkpoint("r", 0).status == "running"  # type: ignore[union-attr]
        first = store.complete_stage("r", 0, batch, "load", {"rows_loaded": 8})
        again = store.complete_stage("r", 0, batch, "load", {"rows_loaded": 8})
        assert first and not again
    # Then counts are exact and the shard is done
    cp = store.get_checkpoint("r", 0)
    assert (cp.batches_cleaned, cp.batches_loaded) == (2, 2)  # type: ignore[union-attr]
    assert (cp.rows_cleaned, cp.rows_quarantined, cp.rows_loaded) == (16, 4, 16)  # type: ignore[union-attr]
    assert cp.complete and cp.status == "done"  # type: ignore[union-attr]
    assert store.is_done(task_fingerprint("load", "r", 0, 1))
    with pytest.raises(ValueError, match="counts only"):
        store.complete_stage("r", 0, 0, "load", {"rows_cleaned": 1})


def test_lost_ledger_entry_does_not_count_twice(store: StateStore) -> None:
    # Given a batch counted as loaded whose TaskDedup entry is then lost (a crash between
    # the two writes on a store without transactions)
    _run(store)
    store.record_fetch(_payload(0), exhausted=True)
    assert store.complete_stage("r", 0, 0, "load", {"rows_loaded": 7})
    fingerprint = task_fingerprint("load", "r", 0, 0)
    if isinstance(store, MongoStateStore):
        store.dedup.delete_one({"task_fingerprint": fingerprint})
    else:
        store._conn().execute("DELETE FROM TaskDedup WHERE task_fingerprint = ?", (fingerprint,))  # type: ignore[attr-defined]
    assert not store.is_done(fingerprint)
    # When the step is redone
    store.complete_stage("r", 0, 0, "load", {"rows_loaded": 7})
    # Then the ledger is whole again and the rows are not counted twice (Mongo's guard;
    # SQLite writes both in one transaction, so it cannot lose one without the other and
    # re-counts, which is why it never deletes ledger rows)
    assert store.is_done(fingerprint)
    if isinstance(store, MongoStateStore):
        assert store.get_checkpoint("r", 0).rows_loaded == 7  # type: ignore[union-attr]


def test_shard_status_and_last_error(store: StateStore) -> None:
    _run(store)
    store.set_shard_status("r", 1, "failed", last_error="BatchError: boom")
    store.set_shard_status("r", 1, "running")
    cp = store.get_checkpoint("r", 1)
    assert cp.status == "running" and cp.last_error == "BatchError: boom"  # type: ignore[union-attr]


# -- dedup ledger ----------------------------------------------------------------------------
def test_dedup_ledger_marks_once_and_counts_per_run(store: StateStore) -> None:
    assert store.mark_done("f1", "fetch", "r1")
    assert not store.mark_done("f1", "fetch", "r1")
    assert store.mark_done("f2", "clean", "r2")
    assert store.is_done("f1") and not store.is_done("f3")
    assert store.count_done("r1") == 1 and store.count_done() == 2


# -- errors ----------------------------------------------------------------------------------
def test_errors_newest_first_with_traceback_and_context(store: StateStore) -> None:
    for i in range(3):
        store.log_error(ErrorRecord(run_id="r", stage="clean", error_type="BatchError",
                                    message=f"boom {i}", shard=i, batch=0, traceback="Traceback...",
                                    context={"retries": i}, at=utcnow() + timedelta(seconds=i)))
    store.log_error(ErrorRecord(run_id="other", stage="load", error_type="E", message="x"))
    errors = store.list_errors("r", limit=2)
    assert [e.message for e in errors] == ["boom 2", "boom 1"]
    assert errors[0].context == {"retries": 2} and errors[0].traceback == "Traceback..."
    assert errors[0].at.tzinfo is not None
    assert len(store.list_errors()) == 4


# -- leases ----------------------------------------------------------------------------------
def test_leases_fence_owners(store: StateStore) -> None:
    # Given worker a holds a lease
    lease = store.acquire_lease("shard-1", "a", ttl=30, payload_ref="runs/r/1")
    assert lease is not None and lease.taken_by == "a" and lease.token == 1
    # Then b cannot take it, and a can renew it with its token but not with another
    assert store.acquire_lease("shard-1", "b", ttl=30) is None
    assert store.renew_lease("shard-1", "a", lease.token, ttl=30)
    assert not store.renew_lease("shard-1", "a", lease.token + 7, ttl=30)
    # When a's lease expires, Then b takes it over with a larger token and a retry counted
    short = store.acquire_lease("shard-2", "a", ttl=0.05)
    time.sleep(0.1)
    taken = store.acquire_lease("shard-2", "b", ttl=30)
    assert taken is not None and taken.token > short.token and taken.retry_count == 1  # type: ignore[union-attr]
    # And the stale owner can neither renew nor release it
    assert not store.renew_lease("shard-2", "a", short.token, ttl=30)  # type: ignore[union-attr]
    assert not store.release_lease("shard-2", "a", short.token)  # type: ignore[union-attr]
    # When the owner releases, Then anyone may take it
    assert store.release_lease("shard-1", "a", lease.token)
    again = store.acquire_lease("shard-1", "c", ttl=30)
    assert again is not None and again.taken_by == "c"
    assert store.get_lease("shard-1").payload_ref == "runs/r/1"  # type: ignore[union-attr]


# -- SQLite across processes -----------------------------------------------------------------
def _hammer(url: str, worker: int) -> None:
    store = open_state(url)
    for batch in range(10):
        store.record_fetch(_payload(batch, rows=1), exhausted=batch == 9)
    for batch in range(40):
        store.complete_stage("r", 0, batch, "clean", {"rows_cleaned": 1, "rows_quarantined": 0})


def test_sqlite_counts_exactly_under_concurrent_processes(tmp_path: Path) -> None:
    # Given a run in a SQLite file
    url = f"sqlite:///{tmp_path}/state.db"
    _run(open_state(url))
    # When four processes race to record the same fetches and stage completions
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(url, i)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    # Then each was counted exactly once
    cp = open_state(url).get_checkpoint("r", 0)
    assert (cp.batches_fetched, cp.rows_fetched, cp.fetch_done) == (10, 10, True)  # type: ignore[union-attr]
    assert (cp.batches_cleaned, cp.rows_cleaned) == (40, 40)  # type: ignore[union-attr]
