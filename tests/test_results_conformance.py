"""One conformance suite for the result stores: SQLite (real file), Redis (the real server on
this machine) and MongoDB (mongomock, or a real server with ETL_TEST_MONGO_URL)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import pytest

from etl.core.errors import ConfigError, UnsupportedURL
from results import InvalidTransition, JobNotFound, JobResult, ResultStore, open_results
from results.client import Job, JobFailed, ResultClient
from results.errors import ResultNotFound


def _serialized(store: ResultStore) -> ResultStore:
    """`store` (on mongomock, an in-process fake that is not thread-safe) with every public
    method taken one call at a time, so tests that read while another thread writes are
    deterministic there; a real server needs no such help."""
    lock = threading.RLock()

    class Serialized(type(store)):  # type: ignore[misc, valid-type]
        __module__ = type(store).__module__

    for name in dir(type(store)):
        method = getattr(type(store), name)
        if name.startswith("_") or not callable(method):
            continue

        def locked(self, *args, _method=method, **kwargs):  # type: ignore[no-untyped-def]
            with lock:
                return _method(self, *args, **kwargs)

        setattr(Serialized, name, locked)
    store.__class__ = Serialized
    return store



def _at_once(work: Callable[[int], None], count: int) -> None:
    """Run `work(0)` ... `work(count - 1)` on threads of their own at once; wait for all."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

@pytest.fixture(params=["sqlite", "redis", "mongo", "postgres", "mariadb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    if request.param == "sqlite":
        yield open_results(f"sqlite:///{tmp_path}/results.db")
    elif request.param == "redis":
        from results.redis import RedisResultStore

        url = request.getfixturevalue("redis_url")
        prefix = f"etltest-{uuid.uuid4().hex[:8]}"
        redis_store = RedisResultStore(url, prefix=prefix)
        yield redis_store
        for key in redis_store.client.scan_iter(match=f"{prefix}:*"):
            redis_store.client.delete(key)
    elif request.param == "mongo":
        from results.mongo import MongoResultStore

        client = request.getfixturevalue("mongo_client")
        name = request.getfixturevalue("mongo_db_name")
        mongo = MongoResultStore("mongodb://unused/x", client=client, database=name)
        yield _serialized(mongo) if _in_process_fake(mongo) else mongo
        client.drop_database(name)
    else:
        pytest.importorskip("sqlalchemy")
        url = request.getfixturevalue(f"{request.param}_url")
        sql = open_results(f"{url}?key_prefix=t{uuid.uuid4().hex[:10]}")
        yield sql
        sql.drop()  # type: ignore[attr-defined]
        sql.close()


def _job(job_id: str, **kw) -> JobResult:  # type: ignore[no-untyped-def]
    return JobResult(job_id=job_id, function=kw.pop("function", "etl_load"),
                     run_id=kw.pop("run_id", "run-1"), queue=kw.pop("queue", "etl"),
                     args=["run-1", 3, 0], **kw)


def test_full_lifecycle_with_history_and_timings(store: ResultStore) -> None:
    # Given a stored job
    store.store(_job("j1"))
    assert store.get_status("j1") == "pending"
    # When it goes through queued, in_progress, retrying, queued, in_progress, completed
    store.update_status("j1", "queued")
    store.update_status("j1", "in_progress", worker_id="host:1")
    store.update_status("j1", "retrying", note="ConnectionError: x", error="x", error_type="ConnectionError",
                        retry_count=1)
    store.update_status("j1", "queued")
    store.update_status("j1", "in_progress")
    done = store.update_status("j1", "completed", result={"rows": 42}, progress=1.0)
    # Then the record holds the result, the timings and every step in order
    job = store.get("j1")
    assert job is not None and job.status == "completed" == done.status
    assert job.result == {"rows": 42} and job.progress == 1.0 and job.retry_count == 1
    assert job.worker_id == "host:1" and job.run_id == "run-1" and job.args == ["run-1", 3, 0]
    assert job.started_at is not None and job.completed_at is not None and job.duration is not None
    assert job.completed_at >= job.started_at and job.expires_at is not None
    assert [t.status for t in store.history("j1")] == [
        "pending", "queued", "in_progress", "retrying", "queued", "in_progress", "completed"]
    assert store.history("j1")[3].note == "ConnectionError: x"
    times = [t.at for t in store.history("j1")]
    assert times == sorted(times)


def test_lifecycle_refuses_illegal_moves_and_unknown_jobs(store: ResultStore) -> None:
    store.store(_job("j2"))
    with pytest.raises(InvalidTransition, match="pending to completed"):
        store.update_status("j2", "completed")
    store.update_status("j2", "cancelled")
    with pytest.raises(InvalidTransition):
        store.update_status("j2", "queued")
    with pytest.raises(JobNotFound):
        store.update_status("nope", "queued")
    with pytest.raises(JobNotFound):
        store.history("nope")
    assert store.get("nope") is None and store.get_status("nope") is None


def test_get_many_in_one_call_skips_missing_ids(store: ResultStore) -> None:
    for i in range(30):
        store.store(_job(f"m{i}"))
    found = store.get_many([f"m{i}" for i in range(0, 40, 2)] + ["m0"])
    assert sorted(found) == sorted(f"m{i}" for i in range(0, 30, 2))
    assert found["m4"].function == "etl_load"


def test_ttl_expiry_and_cleanup(store: ResultStore) -> None:
    # Given two short-lived records and one long-lived
    store.store(_job("short-1"), ttl=timedelta(milliseconds=300))
    store.store(_job("short-2"), ttl=timedelta(milliseconds=300))
    store.store(_job("long"), ttl=timedelta(hours=1))
    assert store.get("short-1") is not None
    # When their time to live passes
    time.sleep(0.6)
    # Then they are gone from reads, and cleanup removes what is left of them
    assert store.get("short-1") is None and store.get_status("short-2") is None
    assert sorted(store.get_many(["short-1", "short-2", "long"])) == ["long"]
    # (MongoDB's own TTL monitor may have removed some already: cleanup counts the rest)
    from results.mongo import MongoResultStore

    left = (store.jobs.count_documents({"job_id": {"$in": ["short-1", "short-2"]}})
            if isinstance(store, MongoResultStore) else 2)
    assert store.cleanup_expired() == left
    assert store.cleanup_expired() == 0
    assert [j.job_id for j in store.list(run_id="run-1")] == ["long"]
    assert store.stats()["total"] == 1


def test_list_filters_and_stats(store: ResultStore) -> None:
    for i in range(6):
        store.store(_job(f"l{i}", run_id="A" if i < 4 else "B", queue="etl" if i % 2 else "other"))
        store.update_status(f"l{i}", "queued")
    store.update_status("l0", "in_progress")
    store.update_status("l0", "failed", error="boom", error_type="BatchError")
    assert [j.job_id for j in store.list(run_id="A", limit=10)] == ["l3", "l2", "l1", "l0"]
    assert [j.job_id for j in store.list(run_id="A", status="failed")] == ["l0"]
    assert {j.job_id for j in store.list(queue="other")} == {"l0", "l2", "l4"}
    assert len(store.list(limit=2)) == 2
    stats = store.stats()
    assert stats["total"] == 6 and stats["by_status"] == {"queued": 5, "failed": 1}
    assert stats["by_queue"] == {"etl": 3, "other": 3}
    assert store.delete("l5") and not store.delete("l5")
    assert store.get("l5") is None


def _in_process_fake(store: ResultStore) -> bool:
    """mongomock: an in-process fake that is not thread-safe (a real server is)."""
    return type(getattr(store, "client", None)).__module__.startswith("mongomock")


def test_concurrent_writers_move_a_job_once(store: ResultStore) -> None:
    # Given a queued job and eight workers racing to start it
    store.store(_job("race"))
    store.update_status("race", "queued")
    outcomes: list[str] = []
    lock = threading.Lock()
    # (mongomock is not thread-safe: the fixture takes its calls one at a time, so the test
    # checks the store's compare-and-set there, and the race itself on SQLite, Redis,
    # PostgreSQL, MariaDB and a real MongoDB server with ETL_TEST_MONGO_URL)

    def start(worker: int) -> None:
        try:
            store.update_status("race", "in_progress", worker_id=f"w{worker}")
            result = "won"
        except InvalidTransition:
            result = "lost"
        with lock:
            outcomes.append(result)

    _at_once(start, 8)
    # Then exactly one wins and the history has one in_progress step
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert [t.status for t in store.history("race")].count("in_progress") == 1


def test_job_handle_waits_for_the_result(store: ResultStore) -> None:
    store.store(_job("w1"))
    store.update_status("w1", "queued")
    job = ResultClient(store).job("w1")
    with pytest.raises(ResultNotFound, match="still queued"):
        job.result(timeout=0.2, poll=0.05)

    def finish() -> None:
        time.sleep(0.3)
        store.update_status("w1", "in_progress")
        store.update_status("w1", "completed", result=[1, 2, 3])

    threading.Thread(target=finish).start()
    assert job.result(timeout=10, poll=0.05) == [1, 2, 3]
    assert job.status() == "completed"
    store.store(_job("w2", status="in_progress"))
    store.update_status("w2", "failed", error="boom", error_type="BatchError")
    with pytest.raises(JobFailed, match="failed: BatchError: boom"):
        Job("w2", store).result(timeout=1)
    with pytest.raises(JobNotFound):
        Job("missing", store).status()


def test_job_result_waits_for_a_record_that_does_not_exist_yet(store: ResultStore) -> None:
    # Given a job just sent, whose record the recorder writes a moment later
    job = ResultClient(store).job("late")

    def record() -> None:
        time.sleep(0.3)
        store.store(_job("late"))
        store.update_status("late", "queued")
        store.update_status("late", "in_progress")
        store.update_status("late", "completed", result="done")

    threading.Thread(target=record).start()
    # When its result is awaited, Then the missing record is waited out, not JobNotFound
    assert job.result(timeout=10, poll=0.05) == "done"
    # And a job that never gets a record is JobNotFound once the timeout has passed
    started = time.monotonic()
    with pytest.raises(JobNotFound):
        ResultClient(store).job("never").result(timeout=0.3, poll=0.05)
    assert time.monotonic() - started >= 0.3


def test_unknown_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedURL, match="sqlite:///.*redis://.*mongodb://"):
        open_results("memcached://x")


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres", "mariadb", "mongomock"])
def test_a_key_prefix_in_the_url_isolates_stores_on_one_server(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # Given two result stores on one server (or SQLite file), each with its own ?key_prefix=
    base = {"sqlite": f"sqlite:///{tmp_path}/shared.db", "mongomock": "mongomock://localhost/kp"}.get(
        kind) or request.getfixturevalue(f"{kind}_url")
    tag = uuid.uuid4().hex[:8]
    one, two = (open_results(f"{base}?key_prefix={name}{tag}") for name in ("a", "b"))
    try:
        # When each stores a job with the same id, and one more
        one.store(_job("kp1", status="queued"))
        two.store(_job("kp1", status="in_progress"))
        two.store(_job("kp2"), ttl=timedelta(milliseconds=200))
        # Then each sees only its own records, in reads, lists, stats and cleanup
        assert one.get_status("kp1") == "queued" and two.get_status("kp1") == "in_progress"
        assert one.get("kp2") is None and two.get("kp2") is not None
        assert one.stats()["total"] == 1 and two.stats()["total"] == 2
        assert [j.job_id for j in one.list(run_id="run-1")] == ["kp1"]
        time.sleep(0.4)
        assert one.cleanup_expired() == 0 and two.cleanup_expired() in (0, 1)
        assert one.get("kp1") is not None and two.get("kp2") is None
    finally:
        for store in (one, two):
            if kind == "redis":
                for key in store.client.scan_iter(match=f"{store.prefix}:*"):
                    store.client.delete(key)
            elif kind in ("postgres", "mariadb"):
                store.drop()
            store.close()


def test_a_key_prefix_must_be_a_plain_name() -> None:
    with pytest.raises(ConfigError, match="key_prefix must be letters, digits"):
        open_results("sqlite:///x.db?key_prefix=a:b")


def test_record_keeps_defaults_metadata_and_updated_at(store: ResultStore) -> None:
    # Given a record with metadata and a retry count of 0
    store.store(_job("md", status="queued", metadata={"owner": "team-a", "n": 2}))
    first = store.get("md")
    assert first is not None and first.updated_at is not None
    # When it is moved with retry_count=0 (the default value) and then again by a batch
    time.sleep(0.01)
    store.update_status("md", "in_progress", retry_count=0)
    from results.changes import StatusChange

    store.write_many([StatusChange("md", "completed", fields={"result": 7})])
    # Then 0 reads back as 0 (not null), the metadata is kept, updated_at follows the moves
    job = store.get("md")
    assert job is not None and job.retry_count == 0 and job.metadata == {"owner": "team-a", "n": 2}
    assert job.updated_at is not None and job.updated_at >= job.started_at > first.updated_at
    assert job.updated_at == job.completed_at


def test_stats_give_success_rate_and_store_kind(store: ResultStore) -> None:
    for i, status in enumerate(["completed", "completed", "completed", "failed", "queued"]):
        store.store(_job(f"s{i}", status=status, queue="q1" if i < 2 else "q2"))
    stats = store.stats()
    assert stats["total"] == 5 and stats["by_status"] == {"completed": 3, "failed": 1, "queued": 1}
    assert stats["by_queue"] == {"q1": 2, "q2": 3}
    assert stats["success_rate"] == 0.75
    assert stats["store"] in ("sqlite", "redis", "mongodb", "postgresql", "mysql", "mariadb")


def test_a_batch_of_changes_settles_each_job_in_order(store: ResultStore) -> None:
    from datetime import datetime, timezone

    from results.changes import NewRecord, StatusChange

    # Given one stored job, queued
    store.store(_job("b-old", status="queued"))
    at = [datetime(2030, 1, 1, 0, 0, s, tzinfo=timezone.utc) for s in range(6)]
    # When one batch brings a new job through its whole life, moves the stored one, asks a
    # move its status forbids, and moves a job that has no record
    outcomes = store.write_many([
        NewRecord(_job("b-new", status="queued"), ttl=timedelta(hours=1)),
        StatusChange("b-old", "in_progress", fields={"worker_id": "w:1"}, at=at[0]),
        StatusChange("b-new", "in_progress", at=at[1]),
        StatusChange("b-old", "completed", fields={"result": {"rows": 3}, "progress": 1.0},
                     at=at[2]),
        StatusChange("b-new", "completed", fields={"result": {"skipped": "dedup"}}, at=at[3]),
        StatusChange("b-old", "queued", at=at[4]),
        StatusChange("b-none", "in_progress", at=at[5]),
    ])
    # Then each change says whether it applied, or the error that refused it
    assert [type(o).__name__ if o else None for o in outcomes] == [
        None, None, None, None, None, "InvalidTransition", "JobNotFound"]
    # And the records hold every applied step in order, stamped with its own time
    old, new = store.get("b-old"), store.get("b-new")
    assert old is not None and new is not None and store.get("b-none") is None
    assert [t.status for t in old.history] == ["queued", "in_progress", "completed"]
    assert old.status == "completed" == store.get_status("b-old")
    assert old.result == {"rows": 3} and old.progress == 1.0 and old.worker_id == "w:1"
    assert old.started_at == at[0] and old.completed_at == at[2] and old.duration == 2.0
    assert [t.status for t in new.history] == ["queued", "in_progress", "completed"]
    assert new.status == "completed" == store.get_status("b-new")
    assert new.result == {"skipped": "dedup"} and new.duration == 2.0
    assert sorted(j.job_id for j in store.list(run_id="run-1", status="completed")) == [
        "b-new", "b-old"]
    from results.models import utcnow

    assert new.expires_at is not None and 1800 < (new.expires_at - utcnow()).total_seconds() <= 3600
    # And the same batch again is refused where the lifecycle says so, and changes nothing
    again = store.write_many([StatusChange("b-old", "in_progress", at=at[5])])
    assert isinstance(again[0], InvalidTransition)
    assert [t.status for t in store.history("b-old")] == ["queued", "in_progress", "completed"]


def test_a_batch_whose_record_changed_meanwhile_is_applied_as_update_status_would(
        store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from results.changes import StatusChange

    if type(store).__name__ == "SQLiteResultStore":
        pytest.skip("SQLite reads and writes a batch under one write lock: nothing comes between")
    if type(store).__name__ == "SqlResultStore":
        pytest.skip("a SQL batch locks the rows it moves (FOR UPDATE): nothing comes between")
    # Given a queued job, and another writer that moves it just after the batch read it
    store.store(_job("raced", status="queued"))
    module = importlib.import_module(type(store).__module__)
    real_settle = module.settle

    def settle_then_race(changes, stored):  # type: ignore[no-untyped-def]
        settled = real_settle(changes, stored)
        store.update_status("raced", "in_progress", worker_id="other:1")
        return settled

    monkeypatch.setattr(module, "settle", settle_then_race)
    # When the batch moves it to in_progress, then completed
    outcomes = store.write_many([StatusChange("raced", "in_progress", fields={"worker_id": "me:1"}),
                                 StatusChange("raced", "completed", fields={"result": 1})])
    # Then the first is refused (the other writer moved it first), the second applied once
    assert isinstance(outcomes[0], InvalidTransition) and outcomes[1] is None
    job = store.get("raced")
    assert job is not None and job.worker_id == "other:1" and job.result == 1
    assert [t.status for t in job.history] == ["queued", "in_progress", "completed"]


def test_an_end_whose_start_was_lost_records_both(store: ResultStore) -> None:
    from results.changes import NewRecord, StatusChange

    # Given a queued job whose worker's start never reached the store (written too late,
    # or by a worker killed before its writer ran)
    store.write_many([NewRecord(_job("lost-start", status="queued"))])
    # When the end of its message comes, marked as a worker's end (catch_up)
    outcomes = store.write_many([StatusChange("lost-start", "completed", fields={"result": 1},
                                              catch_up=True)])
    # Then it is completed, not left queued: the implied start is recorded before it
    job = store.get("lost-start")
    assert outcomes == [None] and job is not None and job.status == "completed"
    assert [t.status for t in job.history][-2:] == ["in_progress", "completed"]
    assert job.history[-2].note == "start not recorded" and job.started_at is not None
    # And without the mark the lifecycle still refuses it
    store.write_many([NewRecord(_job("strict", status="queued"))])
    assert isinstance(store.write_many([StatusChange("strict", "completed")])[0], InvalidTransition)


def test_claim_writes_a_record_only_where_none_is_live(store: ResultStore) -> None:
    # Given a new id, claimed with a short time to live (and a password in its kwargs)
    first = _job("claimed", status="queued", kwargs={"url": "postgresql://u:hunter2@db/x"})
    assert store.claim(first, ttl=timedelta(milliseconds=400)) is True
    # When it is claimed again while its record lives
    second = _job("claimed", status="queued", function="other")
    # Then the second claim is refused and the first record stays, written as store writes
    assert store.claim(second) is False
    job = store.get("claimed")
    assert job is not None and job.function == "etl_load" and job.status == "queued"
    assert "hunter2" not in str(job.kwargs) and [t.status for t in job.history] == ["queued"]
    assert job.expires_at is not None and job.updated_at is not None
    # And once that record expired, a claim takes its place
    time.sleep(0.6)
    assert store.claim(_job("claimed", function="third"), ttl=timedelta(hours=1)) is True
    again = store.get("claimed")
    assert again is not None and again.function == "third"
    assert [j.job_id for j in store.list(run_id="run-1")] == ["claimed"]


def test_racing_claims_of_one_new_id_give_exactly_one_winner(store: ResultStore) -> None:
    # Given eight senders about to claim one new id at the same moment
    # (mongomock is not thread-safe: the fixture takes its calls one at a time, so the test
    # checks the store's claim there, and the race itself on SQLite, Redis, PostgreSQL,
    # MariaDB and a real MongoDB server with ETL_TEST_MONGO_URL)
    start = threading.Barrier(8)
    won: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claim(sender: int) -> None:
        start.wait()
        try:
            claimed = store.claim(_job("contested", status="queued", worker_id=f"s{sender}"))
        except BaseException as exc:  # noqa: BLE001 - a loser must lose, not fail (deadlock)
            with lock:
                errors.append(exc)
            return
        if claimed:
            with lock:
                won.append(sender)

    _at_once(claim, 8)
    # When they are done, Then exactly one claim won, none failed, the record is the winner's
    assert errors == [] and len(won) == 1
    job = store.get("contested")
    assert job is not None and job.worker_id == f"s{won[0]}"
