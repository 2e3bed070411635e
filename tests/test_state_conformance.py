"""One conformance suite for every state store: SQLite (a real file) and MongoDB (mongomock,
or a real server when ETL_TEST_MONGO_URL is set). Each test reads Given / When / Then.

The SQLite-only tests at the end race real threads and real processes against one file."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from etl.core.errors import ConfigError, LeaseLost
from etl.stores.state import ErrorRecord, Fence, Lease, RawPayload, RunRecord, StateStore, open_state, task_fingerprint
from etl.stores.state.base import utcnow
from etl.stores.state.mongo import MongoStateStore
from etl.stores.state.sqlite import SQLiteStateStore

PLAN = "hash(k)/2"


@pytest.fixture(params=["sqlite", "mongo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "sqlite":
        sqlite_store = SQLiteStateStore(f"sqlite:///{tmp_path}/state.db")
        yield sqlite_store
        sqlite_store.close()
        return
    client = request.getfixturevalue("mongo_client")
    name = request.getfixturevalue("mongo_db_name")
    yield MongoStateStore("mongodb://unused/x", client=client, database=name)
    client.drop_database(name)


def _payload(batch: int, *, run: str = "r", shard: int = 0, rows: int = 10,
             cursor_end: Any = "default") -> RawPayload:
    return RawPayload(run_id=run, shard=shard, batch=batch, key=f"raw/{run}/{shard}/{batch}",
                      bytes=100 + batch, sha256="ab" * 32, rows=rows,
                      cursor_start=batch * 10 - 1 if batch else None,
                      cursor_end=batch * 10 + 9 if cursor_end == "default" else cursor_end)


def _start_run(store: StateStore, run_id: str = "r", *, shards: int = 2, pipeline: str = "p",
               plan: str = PLAN, age: float = 0.0) -> RunRecord:
    """A run created `age` seconds ago, with its checkpoints."""
    run = RunRecord(run_id=run_id, pipeline=pipeline, plan=plan, shards=shards,
                    params={"batch_size": 10, "plan": {"kind": "hash", "shards": shards}},
                    created_at=utcnow() - timedelta(seconds=age))
    assert store.create_run(run)
    store.init_checkpoints(run_id, shards)
    return run


def _checkpoint(store: StateStore, shard: int = 0, run: str = "r") -> Any:
    checkpoint = store.get_checkpoint(run, shard)
    assert checkpoint is not None
    return checkpoint


def _forget_ledger_entry(store: StateStore, fingerprint: str) -> None:
    """Delete one TaskDedup entry behind the store's back (what a crash between the count
    and the ledger write leaves on a store without transactions)."""
    if isinstance(store, MongoStateStore):
        store.dedup.delete_one({"task_fingerprint": fingerprint})
    else:
        assert isinstance(store, SQLiteStateStore)
        conn = sqlite3.connect(store.path, timeout=30)
        with conn:
            conn.execute("DELETE FROM TaskDedup WHERE task_fingerprint = ?", (fingerprint,))
        conn.close()


# -- the interface ---------------------------------------------------------------------------
def test_store_satisfies_the_protocol(store: StateStore) -> None:
    # Given a store, Then it is a StateStore and shows its URL
    assert isinstance(store, StateStore)
    assert store.url.startswith(("sqlite:///", "mongodb://"))


# -- runs (EtlRun) ---------------------------------------------------------------------------
def test_run_is_created_once_and_read_back(store: StateStore) -> None:
    # Given a run
    run = _start_run(store, "a")
    # When the same run id is created again with other values
    again = store.create_run(RunRecord(run_id="a", pipeline="other", plan="x", shards=9))
    # Then it is refused and the first record is unchanged, params and times intact
    assert again is False
    found = store.get_run("a")
    assert found is not None
    assert (found.pipeline, found.plan, found.shards, found.status) == ("p", PLAN, 2, "running")
    assert found.params == {"batch_size": 10, "plan": {"kind": "hash", "shards": 2}}
    assert found.created_at.tzinfo is not None
    assert abs(found.created_at - run.created_at) < timedelta(milliseconds=1)
    # And an unknown run is None
    assert store.get_run("nope") is None


def test_latest_run_is_the_newest_unfinished(store: StateStore) -> None:
    # Given three runs of one pipeline and plan: old (failed), middle (running), new (completed)
    _start_run(store, "old", age=30)
    _start_run(store, "middle", age=20)
    _start_run(store, "new", age=10)
    store.set_run_status("old", "failed")
    store.set_run_status("new", "completed")
    # When the latest run is asked for, Then unfinished ones skip the completed run
    assert store.latest_run("p", PLAN).run_id == "middle"  # type: ignore[union-attr]
    assert store.latest_run("p", PLAN, unfinished=False).run_id == "new"  # type: ignore[union-attr]
    # And a failed run counts as unfinished once the newer ones are done
    store.set_run_status("middle", "completed")
    assert store.latest_run("p", PLAN).run_id == "old"  # type: ignore[union-attr]
    # And another plan or pipeline has none
    assert store.latest_run("p", "range(k)/4") is None
    assert store.latest_run("q", PLAN, unfinished=False) is None


def test_list_runs_newest_first_filtered_and_limited(store: StateStore) -> None:
    # Given runs of two pipelines created at different times
    for age, (run_id, pipeline) in enumerate([("p3", "p"), ("q2", "q"), ("p1", "p"), ("q0", "q")]):
        _start_run(store, run_id, pipeline=pipeline, age=10 - age)
    # When runs are listed, Then newest first, by pipeline when asked, at most `limit`
    assert [r.run_id for r in store.list_runs()] == ["q0", "p1", "q2", "p3"]
    assert [r.run_id for r in store.list_runs(pipeline="p")] == ["p1", "p3"]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["q0", "p1"]
    assert store.list_runs(pipeline="none") == []


def test_set_run_status_updates_status_and_time(store: StateStore) -> None:
    # Given a run created a minute ago
    run = RunRecord(run_id="r", pipeline="p", plan=PLAN, shards=1,
                    created_at=utcnow() - timedelta(minutes=1),
                    updated_at=utcnow() - timedelta(minutes=1))
    store.create_run(run)
    # When its status is set
    store.set_run_status("r", "completed")
    # Then the status changed and updated_at moved forward
    found = store.get_run("r")
    assert found is not None and found.status == "completed"
    assert found.updated_at > run.updated_at + timedelta(seconds=30)


# -- checkpoints (TaskCheckpoint) ------------------------------------------------------------
def test_init_checkpoints_is_idempotent_and_keeps_progress(store: StateStore) -> None:
    # Given a run of two shards whose shard 0 fetched a batch
    _start_run(store)
    assert store.record_fetch(_payload(0), exhausted=False)
    # When checkpoints are initialised again, now for three shards
    store.init_checkpoints("r", 2)
    store.init_checkpoints("r", 3)
    # Then progress is kept, nothing is duplicated, and only the new shard is added
    checkpoints = store.list_checkpoints("r")
    assert [c.shard for c in checkpoints] == [0, 1, 2]
    assert (checkpoints[0].batches_fetched, checkpoints[0].rows_fetched, checkpoints[0].cursor) == (1, 10, 9)
    assert [c.status for c in checkpoints] == ["running", "pending", "pending"]
    assert checkpoints[2].cursor is None and not checkpoints[2].complete
    assert checkpoints[0].updated_at.tzinfo is not None
    # And checkpoints of all runs are ordered by (run, shard)
    _start_run(store, "a", shards=1)
    assert [(c.run_id, c.shard) for c in store.list_checkpoints()] == [("a", 0), ("r", 0), ("r", 1), ("r", 2)]
    assert store.get_checkpoint("r", 7) is None


def test_record_fetch_advances_exactly_once(store: StateStore) -> None:
    # Given a fresh run
    _start_run(store)
    # When batch 0 is recorded twice (a redelivered message)
    first = store.record_fetch(_payload(0), exhausted=False)
    second = store.record_fetch(_payload(0), exhausted=False)
    # Then only the first advanced the checkpoint, and rows are counted once
    assert (first, second) == (True, False)
    cp = _checkpoint(store)
    assert (cp.batches_fetched, cp.rows_fetched, cp.cursor) == (1, 10, 9)
    assert (cp.fetch_done, cp.status) == (False, "running")


def test_record_fetch_for_the_wrong_batch_does_not_advance(store: StateStore) -> None:
    # Given a shard that fetched batch 0
    _start_run(store)
    store.record_fetch(_payload(0), exhausted=False)
    # When a stale (0) or future (5) batch is recorded
    assert not store.record_fetch(_payload(0, rows=99), exhausted=True)
    assert not store.record_fetch(_payload(5, rows=99), exhausted=True)
    # Then the checkpoint stays at batch 1 with its cursor, and the next batch still fits
    cp = _checkpoint(store)
    assert (cp.batches_fetched, cp.rows_fetched, cp.cursor, cp.fetch_done) == (1, 10, 9, False)
    assert store.record_fetch(_payload(1), exhausted=True)
    cp = _checkpoint(store)
    assert (cp.batches_fetched, cp.rows_fetched, cp.cursor, cp.fetch_done) == (2, 20, 19, True)
    assert not cp.complete and cp.status == "running"  # fetched, not yet loaded


@pytest.mark.parametrize("cursor", [None, 42, 2.5, "2024-05-01T12:00:00+00:00", "clé/ü"])
def test_cursor_keeps_its_type(store: StateStore, cursor: Any) -> None:
    # Given a shard, When a batch ending at `cursor` is recorded
    _start_run(store)
    store.record_fetch(_payload(0, cursor_end=cursor), exhausted=False)
    # Then the checkpoint and the payload give back the same value and type
    cp = _checkpoint(store)
    payload = store.get_payload("r", 0, 0)
    assert payload is not None
    for value in (cp.cursor, payload.cursor_end):
        assert value == cursor and type(value) is type(cursor)


def test_finish_fetch_only_at_the_expected_batch(store: StateStore) -> None:
    # Given an empty shard 1 (nothing fetched) and shard 0 with two batches fetched
    _start_run(store)
    store.record_fetch(_payload(0), exhausted=False)
    store.record_fetch(_payload(1), exhausted=False)
    # When fetching is finished at the wrong batch count, Then nothing changes
    assert not store.finish_fetch("r", 1, 3)
    assert not _checkpoint(store, 1).fetch_done
    # When it is finished at the right count (twice), Then only the first call changes it
    assert store.finish_fetch("r", 1, 0)
    assert not store.finish_fetch("r", 1, 0)
    empty = _checkpoint(store, 1)
    assert empty.fetch_done and empty.complete and empty.status == "done"
    # And a shard with batches still to load is fetched but not done
    assert store.finish_fetch("r", 0, 2)
    busy = _checkpoint(store, 0)
    assert busy.fetch_done and not busy.complete and busy.status == "running"


def test_complete_stage_counts_each_batch_once_and_marks_done(store: StateStore) -> None:
    # Given a shard with two fetched batches, the second exhausting it
    _start_run(store)
    store.record_fetch(_payload(0), exhausted=False)
    store.record_fetch(_payload(1), exhausted=True)
    # When each batch is cleaned and loaded, every call made twice
    answers = []
    for batch in (0, 1):
        for stage, rows in (("clean", {"rows_cleaned": 8, "rows_quarantined": 2}),
                            ("load", {"rows_loaded": 8})):
            answers += [store.complete_stage("r", 0, batch, stage, rows) for _ in range(2)]
        if batch == 0:  # half way: still running
            assert _checkpoint(store).status == "running" and not _checkpoint(store).complete
    # Then only the first call of each counted, counts are exact and the shard is done
    assert answers == [True, False] * 4
    cp = _checkpoint(store)
    assert (cp.batches_fetched, cp.batches_cleaned, cp.batches_loaded) == (2, 2, 2)
    assert (cp.rows_fetched, cp.rows_cleaned, cp.rows_quarantined, cp.rows_loaded) == (20, 16, 4, 16)
    assert cp.complete and cp.status == "done"
    # And each completion is in the ledger
    for stage in ("clean", "load"):
        for batch in (0, 1):
            assert store.is_done(task_fingerprint(stage, "r", 0, batch))
    assert store.count_done("r") == 4


def test_a_clean_keeps_its_quarantined_rows_with_its_count(store: StateStore) -> None:
    # Given a fetched batch
    _start_run(store)
    store.record_fetch(_payload(0), exhausted=True)
    assert store.get_quarantine("r", 0, 0) is None
    # When its clean is counted with the bytes of its rejected rows, then again (a redelivery)
    assert store.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 8, "rows_quarantined": 2},
                                quarantine=b"two rows")
    assert not store.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 8,
                                                          "rows_quarantined": 2},
                                    quarantine=b"two rows")
    # Then the bytes are kept once, beside the count, and no other batch or run has any
    assert store.get_quarantine("r", 0, 0) == b"two rows"
    assert _checkpoint(store).rows_quarantined == 2
    assert store.get_quarantine("r", 0, 1) is None and store.get_quarantine("other", 0, 0) is None


def test_complete_stage_refuses_unknown_stage_or_counter(store: StateStore) -> None:
    # Given a run
    _start_run(store)
    # When a stage is completed with a counter of another stage, or an unknown stage
    with pytest.raises(ValueError, match="counts only"):
        store.complete_stage("r", 0, 0, "load", {"rows_cleaned": 1})
    with pytest.raises(ValueError, match="counts only"):
        store.complete_stage("r", 0, 0, "fetch", {})
    # Then nothing was counted nor marked done
    cp = _checkpoint(store)
    assert (cp.batches_loaded, cp.rows_cleaned) == (0, 0)
    assert store.count_done() == 0


def test_ledger_written_ahead_does_not_stop_or_double_the_count(store: StateStore) -> None:
    # Given a batch whose ledger entry was written on its own (mark_done) before its count
    _start_run(store)
    store.record_fetch(_payload(0), exhausted=True)
    fingerprint = task_fingerprint("load", "r", 0, 0)
    assert store.mark_done(fingerprint, "load", "r")
    # When the stage is completed twice and marked done once more
    first = store.complete_stage("r", 0, 0, "load", {"rows_loaded": 7})
    second = store.complete_stage("r", 0, 0, "load", {"rows_loaded": 7})
    store.mark_done(fingerprint, "load", "r")
    # Then it is counted exactly once and the ledger holds one entry
    assert (first, second) == (True, False)
    cp = _checkpoint(store)
    assert (cp.batches_loaded, cp.rows_loaded, cp.status) == (1, 7, "done")
    assert store.count_done("r") == 1


def test_counted_batch_with_lost_ledger_entry_is_not_counted_again(store: StateStore) -> None:
    # Given a batch counted as loaded whose TaskDedup entry is missing (the process died
    # between the count and the ledger write, the MongoDB store's crash window)
    _start_run(store)
    store.record_fetch(_payload(0), exhausted=True)
    assert store.complete_stage("r", 0, 0, "load", {"rows_loaded": 7})
    fingerprint = task_fingerprint("load", "r", 0, 0)
    _forget_ledger_entry(store, fingerprint)
    assert not store.is_done(fingerprint)
    # When the redelivered message completes the stage again
    again = store.complete_stage("r", 0, 0, "load", {"rows_loaded": 7})
    # Then the ledger is whole again and the rows are not counted twice
    assert again is False
    assert store.is_done(fingerprint)
    cp = _checkpoint(store)
    assert (cp.batches_loaded, cp.rows_loaded, cp.status) == (1, 7, "done")


def test_shard_status_and_last_error(store: StateStore) -> None:
    # Given a shard that failed with an error
    _start_run(store)
    store.set_shard_status("r", 1, "failed", last_error="BatchError: boom")
    assert _checkpoint(store, 1).status == "failed"
    # When its status is set again without an error
    store.set_shard_status("r", 1, "running")
    # Then the status changed and the last error is kept
    cp = _checkpoint(store, 1)
    assert cp.status == "running" and cp.last_error == "BatchError: boom"
    assert _checkpoint(store, 0).last_error is None


# -- dedup ledger (TaskDedup) ----------------------------------------------------------------
def test_dedup_ledger_marks_once_and_counts_per_run(store: StateStore) -> None:
    # Given an empty ledger, When fingerprints are marked (one twice)
    marks = [store.mark_done("f1", "fetch", "r1"), store.mark_done("f1", "fetch", "r1"),
             store.mark_done("f2", "clean", "r2"), store.mark_done("f3", "clean")]
    # Then only first marks count, and counts are per run or overall
    assert marks == [True, False, True, True]
    assert store.is_done("f1") and store.is_done("f3") and not store.is_done("f4")
    assert (store.count_done("r1"), store.count_done("r2"), store.count_done("zz")) == (1, 1, 0)
    assert store.count_done() == 3


# -- raw payload pointers (RawPayload) -------------------------------------------------------
def test_payloads_are_kept_once_and_listed_by_shard_then_batch(store: StateStore) -> None:
    # Given batches fetched out of shard order, one of them recorded twice, and another run
    _start_run(store, shards=2)
    _start_run(store, "other", shards=1)
    for shard, batch in [(1, 0), (0, 0), (1, 1), (0, 1), (0, 2)]:
        store.record_fetch(_payload(batch, shard=shard), exhausted=False)
    store.record_fetch(_payload(1, shard=0, rows=999), exhausted=False)  # a late duplicate
    store.record_fetch(_payload(0, run="other"), exhausted=True)
    # When payloads are listed, Then by (shard, batch), for that run (and shard) only
    assert [(p.shard, p.batch) for p in store.list_payloads("r")] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [p.batch for p in store.list_payloads("r", 1)] == [0, 1]
    assert store.list_payloads("missing") == []
    # And one payload reads back whole, the first record of it kept
    payload = store.get_payload("r", 0, 1)
    assert payload is not None
    assert (payload.key, payload.bytes, payload.sha256, payload.rows) == ("raw/r/0/1", 101, "ab" * 32, 10)
    assert (payload.cursor_start, payload.cursor_end) == (9, 19)
    assert payload.created_at.tzinfo is not None
    assert store.get_payload("r", 0, 9) is None


# -- errors (TaskErrorLog) -------------------------------------------------------------------
def test_errors_newest_first_limited_with_traceback_and_context(store: StateStore) -> None:
    # Given three errors of run r at increasing times and one of another run
    for i in range(3):
        store.log_error(ErrorRecord(run_id="r", stage="clean", error_type="BatchError",
                                    message=f"boom {i}", shard=i, batch=i * 2,
                                    traceback="Traceback (most recent call last): ...",
                                    context={"retries": i, "key": f"raw/r/{i}"},
                                    at=utcnow() + timedelta(seconds=i)))
    store.log_error(ErrorRecord(run_id="other", stage="load", error_type="E", message="x",
                                at=utcnow() + timedelta(seconds=10)))
    # When errors are listed, Then newest first, limited, by run when asked
    errors = store.list_errors("r", limit=2)
    assert [e.message for e in errors] == ["boom 2", "boom 1"]
    assert (errors[0].shard, errors[0].batch, errors[0].error_type) == (2, 4, "BatchError")
    assert errors[0].context == {"retries": 2, "key": "raw/r/2"}
    assert errors[0].traceback.startswith("Traceback")
    assert errors[0].at.tzinfo is not None
    everything = store.list_errors()
    assert [e.message for e in everything] == ["x", "boom 2", "boom 1", "boom 0"]
    assert (everything[0].shard, everything[0].batch, everything[0].context) == (None, None, {})
    assert len(store.list_errors(limit=1)) == 1


# -- leases (PendingTasks) -------------------------------------------------------------------
def test_free_lease_is_taken_and_refused_to_others(store: StateStore) -> None:
    # Given no lease, When worker a acquires one
    lease = store.acquire_lease("shard-1", "a", ttl=30, payload_ref="runs/r/1")
    # Then a holds it with the first token, until about ttl from now
    assert lease is not None
    assert (lease.taken_by, lease.token, lease.retry_count, lease.payload_ref) == ("a", 1, 0, "runs/r/1")
    assert lease.lease_until is not None and lease.lease_until > utcnow() + timedelta(seconds=25)
    # And b cannot take it while it is held
    assert store.acquire_lease("shard-1", "b", ttl=30) is None
    held = store.get_lease("shard-1")
    assert held is not None and held.taken_by == "a"
    assert store.get_lease("unknown") is None


def test_owner_acquiring_again_extends_with_the_same_token(store: StateStore) -> None:
    # Given a holds a short lease
    first = store.acquire_lease("t", "a", ttl=5)
    assert first is not None
    # When a acquires it again with a longer ttl
    again = store.acquire_lease("t", "a", ttl=60)
    # Then it is the same ownership (same token), extended
    assert again is not None and again.token == first.token and again.taken_by == "a"
    assert again.lease_until > first.lease_until  # type: ignore[operator]


def test_expired_lease_is_taken_over_with_a_larger_token(store: StateStore) -> None:
    # Given a's lease has expired
    short = store.acquire_lease("t", "a", ttl=0.05, payload_ref="ref")
    assert short is not None
    time.sleep(0.1)
    # When b acquires it
    taken = store.acquire_lease("t", "b", ttl=30)
    # Then b owns it with a larger token, the takeover counted as a retry, the ref kept
    assert taken is not None
    assert taken.taken_by == "b" and taken.token > short.token
    assert (taken.retry_count, taken.payload_ref) == (1, "ref")
    # And the stale owner can neither renew nor release it, nor take it back
    assert not store.renew_lease("t", "a", short.token, ttl=30)
    assert not store.release_lease("t", "a", short.token)
    assert store.acquire_lease("t", "a", ttl=30) is None


def test_renew_needs_the_right_owner_and_token(store: StateStore) -> None:
    # Given a holds a lease
    lease = store.acquire_lease("t", "a", ttl=1)
    assert lease is not None
    # When renewed with a wrong token or by another owner, Then it fails and is unchanged
    assert not store.renew_lease("t", "a", lease.token + 7, ttl=60)
    assert not store.renew_lease("t", "b", lease.token, ttl=60)
    assert store.get_lease("t").lease_until == lease.lease_until  # type: ignore[union-attr]
    # When renewed by its owner with its token, Then it is extended and the heartbeat moves
    assert store.renew_lease("t", "a", lease.token, ttl=60)
    renewed = store.get_lease("t")
    assert renewed is not None and renewed.lease_until is not None
    assert renewed.lease_until > utcnow() + timedelta(seconds=50)
    assert renewed.heartbeat is not None and renewed.heartbeat >= lease.heartbeat  # type: ignore[operator]
    assert renewed.token == lease.token


def test_released_lease_is_free_for_anyone(store: StateStore) -> None:
    # Given a holds a lease
    lease = store.acquire_lease("t", "a", ttl=30, payload_ref="ref")
    assert lease is not None
    # When released with a wrong token, Then a still holds it
    assert not store.release_lease("t", "a", lease.token + 1)
    assert store.acquire_lease("t", "c", ttl=30) is None
    # When a releases it properly
    assert store.release_lease("t", "a", lease.token)
    # Then it is free, and c takes it with a new token (a release is not a retry)
    free = store.get_lease("t")
    assert free is not None and free.taken_by is None and free.lease_until is None
    taken = store.acquire_lease("t", "c", ttl=30)
    assert taken is not None and taken.taken_by == "c" and taken.token == lease.token + 1
    assert (taken.retry_count, taken.payload_ref) == (0, "ref")
    assert not store.renew_lease("t", "a", lease.token, ttl=30)



def _taken_over(store: StateStore) -> tuple[Fence, Lease]:
    """A run whose shard 0 fetch lane a held, and b took over after a's lease expired:
    (a's stale fence, b's lease)."""
    _start_run(store)
    stale = store.acquire_lease("fetch:r:0", "a", ttl=0.05)
    assert stale is not None
    time.sleep(0.1)
    fresh = store.acquire_lease("fetch:r:0", "b", ttl=30)
    assert fresh is not None and fresh.token > stale.token
    return Fence("fetch:r:0", "a", stale.token), fresh


def test_a_stale_owner_cannot_commit_after_a_takeover(store: StateStore) -> None:
    # Given worker a held the lease of shard 0's fetch lane, and b took it over after it expired
    old, fresh = _taken_over(store)
    # When a tries to commit its fetch, its finish, or a stage
    # Then each raises LeaseLost and nothing is written
    with pytest.raises(LeaseLost):
        store.record_fetch(_payload(0), exhausted=False, fence=old)
    with pytest.raises(LeaseLost):
        store.finish_fetch("r", 0, 0, fence=old)
    with pytest.raises(LeaseLost):
        store.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 5}, fence=old)
    checkpoint = _checkpoint(store)
    assert (checkpoint.batches_fetched, checkpoint.fetch_done, checkpoint.batches_cleaned) == (0, False, 0)
    assert store.get_payload("r", 0, 0) is None
    # And the new owner commits with its own fence
    assert store.record_fetch(_payload(0), exhausted=False, fence=Fence("fetch:r:0", "b", fresh.token))
    assert _checkpoint(store).batches_fetched == 1


def test_a_commit_asked_to_release_ends_its_lease(store: StateStore) -> None:
    # Given the leases of a fetch lane and of a clean, held by worker a
    _start_run(store)
    fetch = store.acquire_lease("fetch:r:0", "a", ttl=30)
    clean = store.acquire_lease("clean:r:0:0", "a", ttl=30)
    assert fetch is not None and clean is not None
    fetched, cleaned = Fence("fetch:r:0", "a", fetch.token), Fence("clean:r:0:0", "a", clean.token)
    # When a commits its fetch (with its ledger entry) and its clean, each asked to release
    assert store.record_fetch(_payload(0), exhausted=False, fence=fetched, release=True, ledger=True)
    assert store.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 5}, fence=cleaned, release=True)
    # Then both effects are in, the fetch is in the ledger, and both fences say released
    checkpoint = _checkpoint(store)
    assert (checkpoint.batches_fetched, checkpoint.batches_cleaned) == (1, 1)
    assert store.is_done(task_fingerprint("fetch", "r", 0, 0))
    assert fetched.released and cleaned.released
    # And both leases are free: b takes each at once, with a new token (not a retry)
    for key, old in (("fetch:r:0", fetch), ("clean:r:0:0", clean)):
        lease = store.get_lease(key)
        assert lease is not None and lease.taken_by is None and lease.lease_until is None
        taken = store.acquire_lease(key, "b", ttl=30)
        assert taken is not None and (taken.token, taken.retry_count) == (old.token + 1, 0)


def test_a_refused_commit_releases_nothing(store: StateStore) -> None:
    # Given a's lease of a fetch lane expired and b took it over
    old, fresh = _taken_over(store)
    # When a commits its fetch, asked to release
    with pytest.raises(LeaseLost):
        store.record_fetch(_payload(0), exhausted=False, fence=old, release=True, ledger=True)
    # Then nothing is written, b still holds the lease, and a's fence is not released
    assert _checkpoint(store).batches_fetched == 0
    assert not store.is_done(task_fingerprint("fetch", "r", 0, 0))
    lease = store.get_lease("fetch:r:0")
    assert lease is not None and (lease.taken_by, lease.token) == ("b", fresh.token)
    assert not old.released


def test_a_fetch_without_ledger_leaves_the_ledger_alone(store: StateStore) -> None:
    # Given a run, When a batch is recorded as fetched without `ledger` (replay does so)
    _start_run(store)
    assert store.record_fetch(_payload(0), exhausted=False)
    # Then the checkpoint moved and the ledger has no entry for it
    assert _checkpoint(store).batches_fetched == 1
    assert not store.is_done(task_fingerprint("fetch", "r", 0, 0))
    assert store.count_done("r") == 0


def test_an_expired_lease_fences_even_before_a_takeover(store: StateStore) -> None:
    # Given a's lease expired but nobody took it over yet
    _start_run(store)
    lease = store.acquire_lease("clean:r:0:0", "a", ttl=0.05)
    assert lease is not None
    time.sleep(0.1)
    # When a commits (with a quarantined row), Then it is refused: the task may already be
    # in someone else's hands; nothing is counted, and the row is not kept either
    with pytest.raises(LeaseLost):
        store.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 5, "rows_quarantined": 1},
                             fence=Fence("clean:r:0:0", "a", lease.token), quarantine=b"row")
    assert not store.is_done(task_fingerprint("clean", "r", 0, 0))
    assert store.get_quarantine("r", 0, 0) is None

# -- opening by URL --------------------------------------------------------------------------
def test_sqlite_urls_relative_absolute_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a working directory, When stores are opened by relative, absolute and memory URLs
    monkeypatch.chdir(tmp_path)
    relative = open_state("sqlite:///nested/dir/state.db")
    absolute = open_state(f"sqlite:///{tmp_path}/abs/state.db")  # sqlite:////tmp/...
    memory = open_state("sqlite:///:memory:")
    # Then files (and parent folders) exist where the URLs say, and each store works
    assert (tmp_path / "nested" / "dir" / "state.db").is_file()
    assert (tmp_path / "abs" / "state.db").is_file()
    for each in (relative, absolute, memory):
        assert isinstance(each, SQLiteStateStore)
        assert each.create_run(RunRecord(run_id="r", pipeline="p", plan=PLAN, shards=1))
        assert each.get_run("r") is not None
        each.close()
    # And a URL without a path is a clear configuration error
    with pytest.raises(ConfigError, match="sqlite:///path"):
        open_state("sqlite://")


def test_mongo_url_names_the_database_and_hides_the_password(mongo_client: Any, mongo_db_name: str) -> None:
    # Given a MongoDB URL with a password and a database, When a store is opened on it
    state = MongoStateStore(f"mongodb://etl:s3cret@db.example:27017/{mongo_db_name}?authSource=admin",
                            client=mongo_client)
    try:
        # Then the database comes from the URL and the password shows nowhere
        assert state.db.name == mongo_db_name
        assert "s3cret" not in state.url and "etl:***@db.example" in state.url
        # And the collections have the product's documented names and indexes
        def keys(name: str, *, unique: bool = False) -> list[tuple[str, ...]]:
            indexes = state.db[name].index_information().values()
            return sorted(tuple(k for k, _ in i["key"]) for i in indexes if i.get("unique") or not unique)

        assert keys("TaskCheckpoint", unique=True) == [("run_id", "shard")]
        assert keys("TaskDedup", unique=True) == [("task_fingerprint",)]
        assert keys("PendingTasks", unique=True) == [("task_key",)]
        assert keys("RawPayload", unique=True) == [("run_id", "shard", "batch")]
        assert ("lease_until",) in keys("PendingTasks")
        assert ("run_id", "at") in keys("TaskErrorLog")
    finally:
        mongo_client.drop_database(mongo_db_name)


def test_mongomock_url_opens_an_in_process_store() -> None:
    pytest.importorskip("mongomock")
    # Given a mongomock URL, When it is opened
    state = open_state("mongomock://local/notebook")
    # Then it is a working MongoDB store on that database
    assert isinstance(state, MongoStateStore) and state.db.name == "notebook"
    assert state.mark_done("f", "load", "r") and state.is_done("f")
    state.close()


# -- SQLite only: schema, threads, processes, fork -------------------------------------------
def test_sqlite_schema_tables_indexes_and_wal(tmp_path: Path) -> None:
    # Given a new SQLite store
    SQLiteStateStore(f"sqlite:///{tmp_path}/state.db").close()
    # When its file is inspected
    conn = sqlite3.connect(tmp_path / "state.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def unique_indexes(table: str) -> list[tuple[str, ...]]:
        found = []
        for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"):
            if unique:
                found.append(tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})")))
        return found

    # Then the tables have the product's documented names and unique indexes, and the journal is WAL
    assert {"EtlRun", "TaskCheckpoint", "TaskDedup", "PendingTasks", "TaskErrorLog", "RawPayload",
            "QuarantinedRows"} <= tables
    assert unique_indexes("TaskCheckpoint") == [("run_id", "shard")]
    assert unique_indexes("TaskDedup") == [("task_fingerprint",)]
    assert unique_indexes("PendingTasks") == [("task_key",)]
    assert unique_indexes("RawPayload") == [("run_id", "shard", "batch")]
    index_sql = " ".join(r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    assert "TaskErrorLog (run_id, at)" in index_sql and "PendingTasks (lease_until)" in index_sql
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_file_of_the_first_schema_is_upgraded(tmp_path: Path) -> None:
    # Given a state file written before checkpoints kept their per-stage done lists
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE TaskCheckpoint (run_id TEXT NOT NULL, shard INTEGER NOT NULL, cursor TEXT, "
                 "status TEXT NOT NULL, fetch_done INTEGER NOT NULL DEFAULT 0, "
                 "batches_fetched INTEGER NOT NULL DEFAULT 0, batches_cleaned INTEGER NOT NULL DEFAULT 0, "
                 "batches_loaded INTEGER NOT NULL DEFAULT 0, rows_fetched INTEGER NOT NULL DEFAULT 0, "
                 "rows_cleaned INTEGER NOT NULL DEFAULT 0, rows_quarantined INTEGER NOT NULL DEFAULT 0, "
                 "rows_loaded INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL, last_error TEXT)")
    conn.execute("INSERT INTO TaskCheckpoint (run_id, shard, cursor, status, batches_fetched, updated_at) "
                 "VALUES ('r', 0, '5', 'running', 1, 0)")
    conn.commit()
    conn.close()
    # When it is opened and a stage completed twice
    state = SQLiteStateStore(f"sqlite:///{path}")
    answers = [state.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 3}) for _ in range(2)]
    # Then the old row is kept and counted once
    cp = state.get_checkpoint("r", 0)
    assert answers == [True, False]
    assert cp is not None
    assert (cp.cursor, cp.batches_fetched, cp.batches_cleaned, cp.rows_cleaned) == (5, 1, 1, 3)
    state.close()


@pytest.mark.parametrize("where", ["file", "memory"])
def test_sqlite_counts_exactly_under_concurrent_threads(tmp_path: Path, where: str) -> None:
    # Given one store shared by eight threads, on a file or in memory
    url = f"sqlite:///{tmp_path}/state.db" if where == "file" else "sqlite:///:memory:"
    state = SQLiteStateStore(url)
    _start_run(state, shards=1)
    barrier = threading.Barrier(8)
    wins: list[tuple[str, int]] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for batch in range(50):
                if state.record_fetch(_payload(batch, rows=2), exhausted=batch == 49):
                    wins.append(("fetch", batch))
                for stage, rows in (("clean", {"rows_cleaned": 2}), ("load", {"rows_loaded": 2})):
                    if state.complete_stage("r", 0, batch, stage, rows):
                        wins.append((stage, batch))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    # When all threads record the same 50 fetches and complete the same 100 stages
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then every step was won by exactly one thread and counted exactly once
    assert failures == []
    assert sorted(wins) == sorted((s, b) for s in ("fetch", "clean", "load") for b in range(50))
    cp = _checkpoint(state)
    assert (cp.batches_fetched, cp.batches_cleaned, cp.batches_loaded) == (50, 50, 50)
    assert (cp.rows_fetched, cp.rows_cleaned, cp.rows_loaded) == (100, 100, 100)
    assert cp.complete and cp.status == "done"
    assert state.count_done("r") == 100
    state.close()


def _race(url: str, barrier: Any, results: Any) -> None:
    """One racing process: record the same 50 fetches, then complete the same 100 stages;
    report which steps this process won."""
    state = open_state(url)
    barrier.wait()
    won: list[tuple[str, int]] = []
    for batch in range(50):
        if state.record_fetch(_payload(batch, rows=3), exhausted=batch == 49):
            won.append(("fetch", batch))
    for batch in range(50):
        if state.complete_stage("r", 0, batch, "clean", {"rows_cleaned": 2, "rows_quarantined": 1}):
            won.append(("clean", batch))
        if state.complete_stage("r", 0, batch, "load", {"rows_loaded": 2}):
            won.append(("load", batch))
        if state.mark_done(task_fingerprint("fetch", "r", 0, batch), "fetch", "r"):
            won.append(("mark", batch))
    state.close()
    results.put(won)


def test_sqlite_counts_exactly_under_concurrent_processes(tmp_path: Path) -> None:
    # Given a run in a SQLite file
    url = f"sqlite:///{tmp_path}/state.db"
    setup = open_state(url)
    _start_run(setup, shards=1)
    setup.close()
    # When four spawned processes race, all at once, through the same fetches and stages
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_race, args=(url, barrier, results)) for _ in range(4)]
    for w in workers:
        w.start()
    won = [step for _ in workers for step in results.get(timeout=50)]
    for w in workers:
        w.join(10)
        assert w.exitcode == 0
    # Then each step was won by exactly one process, and every count is exact
    assert sorted(won) == sorted((s, b) for s in ("fetch", "clean", "load", "mark") for b in range(50))
    state = open_state(url)
    cp = _checkpoint(state)
    assert (cp.batches_fetched, cp.rows_fetched, cp.fetch_done, cp.cursor) == (50, 150, True, 499)
    assert (cp.batches_cleaned, cp.rows_cleaned, cp.rows_quarantined) == (50, 100, 50)
    assert (cp.batches_loaded, cp.rows_loaded, cp.status) == (50, 100, "done")
    assert state.count_done("r") == 150
    assert len(state.list_payloads("r", 0)) == 50
    state.close()


def _forked_child(state: SQLiteStateStore, parents_connection: int) -> None:
    with state._db.use() as conn:  # the child must not reuse the connection it inherited
        if id(conn) == parents_connection:
            os._exit(3)
    state.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 5})


def test_sqlite_store_used_across_fork(tmp_path: Path) -> None:
    # Given a store already used by this process
    state = SQLiteStateStore(f"sqlite:///{tmp_path}/state.db")
    _start_run(state, shards=1)
    with state._db.use() as conn:
        parents_connection = id(conn)
    # When a forked child uses the same object
    child = multiprocessing.get_context("fork").Process(target=_forked_child,
                                                        args=(state, parents_connection))
    child.start()
    child.join(30)
    # Then the child worked on its own connection, and the parent sees it and goes on
    assert child.exitcode == 0
    assert _checkpoint(state).rows_cleaned == 5
    assert state.complete_stage("r", 0, 1, "clean", {"rows_cleaned": 1})
    assert not state.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 5})
    assert _checkpoint(state).batches_cleaned == 2
    assert state.list_checkpoints()[0].updated_at.tzinfo == timezone.utc
    state.close()
