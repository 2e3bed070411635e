"""The recorder's writer thread: batches of changes, written promptly, in order per job,
waiting for a record on its way from another process, never losing a write on a clean
stop, and never holding up a task when the store is down."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

from results import open_results
from results.changes import NewRecord, StatusChange
from results.middleware import ResultRecorder
from results.models import JobResult
from results.writer import BatchWriter

ROOT = Path(__file__).resolve().parents[1]


class Spy:
    """A result store that counts the batches handed to it."""

    def __init__(self, store: Any) -> None:
        self.store, self.batches, self.url = store, [], store.url

    def write_many(self, changes):  # type: ignore[no-untyped-def]
        self.batches.append(len(changes))
        return self.store.write_many(changes)


def _job(job_id: str) -> JobResult:
    return JobResult(job_id=job_id, function="etl_load", status="queued", run_id="r",
                     queue="etl", args=["r", 0, 0])


def test_changes_reach_the_store_in_batches_and_are_readable_within_an_interval(
        tmp_path: Path) -> None:
    # Given a writer on SQLite
    store = open_results(f"sqlite:///{tmp_path}/results.db")
    spy = Spy(store)
    writer = BatchWriter(spy, interval=0.05)

    # When two threads each take 100 jobs through queued, in_progress and completed
    def life(prefix: str) -> None:
        for i in range(100):
            writer.submit("store", NewRecord(_job(f"{prefix}{i}")))
            writer.submit("start", StatusChange(f"{prefix}{i}", "in_progress"))
            writer.submit("complete", StatusChange(f"{prefix}{i}", "completed",
                                                   fields={"result": {"rows": i}}))

    threads = [threading.Thread(target=life, args=(p,)) for p in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(10)
    # Then all 600 changes were written in a handful of batches, none refused
    assert sum(spy.batches) == 600 and len(spy.batches) <= 10
    assert writer.writes == 600 and writer.rejected == writer.failures == 0
    jobs = store.get_many([f"{p}{i}" for p in "ab" for i in range(100)])
    assert {j.status for j in jobs.values()} == {"completed"} and len(jobs) == 200
    assert [t.status for t in jobs["b7"].history] == ["queued", "in_progress", "completed"]
    assert jobs["b7"].result == {"rows": 7}
    # And one more change is readable within a few intervals, without a flush
    started = time.monotonic()
    writer.submit("store", NewRecord(_job("late")))
    while store.get("late") is None:
        assert time.monotonic() - started < 1.0, "not written within a second"
        time.sleep(0.005)
    assert time.monotonic() - started < 0.5


def test_a_retrys_requeue_is_written_without_waiting_out_the_interval(tmp_path: Path) -> None:
    # Given a writer that gathers changes for 5 s, holding a job's record not yet written
    store = open_results(f"sqlite:///{tmp_path}/results.db")
    writer = BatchWriter(store, interval=5.0)
    writer.submit("store", NewRecord(_job("r")))
    # When a retry's retrying -> queued comes, urgent (another worker may pick it up soon)
    started = time.monotonic()
    writer.submit("start", StatusChange("r", "in_progress"))
    writer.submit("retrying", StatusChange("r", "retrying"))
    writer.submit("requeue", StatusChange("r", "queued"), urgent=True)
    # Then the batch holding it is written at once, not 5 s later
    while store.get_status("r") != "queued":
        assert time.monotonic() - started < 2.0, store.get_status("r")
        time.sleep(0.005)
    assert [t.status for t in store.history("r")] == ["queued", "in_progress", "retrying", "queued"]


def test_a_change_whose_record_is_on_its_way_waits_for_it(tmp_path: Path) -> None:
    # Given a writer, and a job whose "queued" record another process will write late
    store = open_results(f"sqlite:///{tmp_path}/results.db")
    writer = BatchWriter(store, interval=0.02, grace=2.0)
    # When this process records the job's start and completion before the record exists
    writer.submit("start", StatusChange("x", "in_progress"))
    writer.submit("complete", StatusChange("x", "completed", fields={"result": 1}))
    time.sleep(0.15)
    store.store(_job("x"))  # the other process's writer
    assert writer.flush(5)
    # Then both applied, in order, once the record was there
    job = store.get("x")
    assert job is not None and job.status == "completed" and job.result == 1
    assert [t.status for t in job.history] == ["queued", "in_progress", "completed"]
    assert writer.rejected == 0 and writer.writes == 2


def test_a_change_whose_record_never_comes_is_given_up_after_the_grace(tmp_path: Path) -> None:
    # Given a writer waiting at most 0.3 s for a missing record
    store = open_results(f"sqlite:///{tmp_path}/results.db")
    writer = BatchWriter(store, interval=0.02, grace=0.3)
    # When a change for a job nobody stores is submitted
    started = time.monotonic()
    writer.submit("start", StatusChange("ghost", "in_progress"))
    # Then a flush returns once the grace has passed, the change refused and counted
    assert writer.flush(5)
    assert 0.25 < time.monotonic() - started < 2.0
    assert writer.rejected == 1 and writer.writes == 0 and store.get("ghost") is None


def test_a_store_outage_costs_a_task_nothing_and_pauses_the_writes(tmp_path: Path) -> None:
    # Given a store that does not answer
    class Down:
        url = "redis://down"
        calls = 0

        def write_many(self, changes):  # type: ignore[no-untyped-def]
            Down.calls += 1
            raise ConnectionError("connection refused")

    writer = BatchWriter(Down(), interval=0.01, cooldown=60)
    # When changes are submitted
    started = time.monotonic()
    for i in range(1000):
        writer.submit("store", NewRecord(_job(f"j{i}")))
    submitted = time.monotonic() - started
    assert writer.flush(5)
    # Then submitting never waited on the store; the batch failed once and was counted
    assert submitted < 0.5
    assert writer.failures == 1000 and Down.calls == 1
    # And within the cooldown the store is left alone: later writes are counted, not tried
    writer.submit("store", NewRecord(_job("later")))
    assert writer.flush(5) and writer.failures == 1001 and Down.calls == 1


def test_what_a_writer_holds_is_written_when_the_process_exits(tmp_path: Path) -> None:
    # Given a process whose writer waits 10 s between batches
    script = (
        "import sys\n"
        "from results import open_results\n"
        "from results.changes import NewRecord\n"
        "from results.models import JobResult\n"
        "from results.writer import BatchWriter\n"
        f"store = open_results('sqlite:///{tmp_path}/results.db')\n"
        "writer = BatchWriter(store, interval=10)\n"
        "writer.submit('store', NewRecord(JobResult(job_id='exit', function='f')))\n"
        "sys.exit(0)\n")
    # When it exits at once, cleanly, without a flush
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Then the record was written before it ended
    job = open_results(f"sqlite:///{tmp_path}/results.db").get("exit")
    assert job is not None and job.function == "f"


def test_a_forked_child_writes_its_own_changes_not_its_parents(tmp_path: Path) -> None:
    # Given a writer holding a change of the parent's not yet written
    store = open_results(f"sqlite:///{tmp_path}/results.db")
    writer = BatchWriter(store, interval=0.5)
    writer.submit("store", NewRecord(_job("parent")))
    # When the process forks and the child records and flushes a change of its own
    pid = os.fork()
    if pid == 0:  # the child
        try:
            writer.submit("store", NewRecord(_job("child")))
            ok = writer.flush(10) and writer.writes == 1
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    # Then the child wrote its own change only, and the parent's is written by the parent
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("child") is not None
    assert writer.flush(5) and store.get("parent") is not None


def test_a_message_that_finishes_while_the_worker_stops_is_recorded_completed(
        tmp_path: Path) -> None:
    # Given a broker recording results, and an actor that takes 0.3 s
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    broker = StubBroker()
    broker.emit_after("process_boot")
    broker.add_middleware(ResultRecorder(results))
    started = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="slow")
    def slow() -> None:
        started.set()
        time.sleep(0.3)

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    message = slow.send()
    assert started.wait(10)
    # When the worker is stopped while the message runs (it lets it finish, then acks it)
    worker.stop()
    # Then its record is completed: never left retrying after it was acked
    job = results.get(message.message_id)
    assert job is not None and job.status == "completed", job
    assert [t.status for t in job.history] == ["pending", "queued", "in_progress", "completed"]
    broker.close()


def test_a_message_still_running_when_the_worker_gives_up_waiting_is_retrying(
        tmp_path: Path) -> None:
    # Given a broker recording results, and an actor that takes longer than the stop waits
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    broker = StubBroker()
    broker.emit_after("process_boot")
    broker.add_middleware(ResultRecorder(results))
    started, release = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, actor_name="stuck")
    def stuck() -> None:
        started.set()
        release.wait(10)

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    message = stuck.send()
    assert started.wait(10)
    # When the worker stops waiting for it after 0.1 s
    worker.stop(timeout=100)
    # Then its record says retrying: the broker redelivers it
    job = results.get(message.message_id)
    assert job is not None and job.status == "retrying"
    assert job.history[-1].note == "worker shut down; the broker redelivers it"
    release.set()
    broker.close()


def test_the_writers_counters_are_in_prometheus(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from etl.runtime.metrics import Metrics
    from results.changes import NewRecord, StatusChange
    from results.models import JobResult
    from results.writer import BatchWriter

    # Given a worker's metrics registry, and a result writer that writes two changes and
    # has one refused
    registry = CollectorRegistry()
    Metrics(None, registry=registry)  # type: ignore[arg-type]
    before = _scraped(generate_latest(registry).decode())
    writer = BatchWriter(open_results(f"sqlite:///{tmp_path}/r.db"), interval=0.01)
    writer.submit("store", NewRecord(JobResult("p1", "f", status="queued")))
    writer.submit("start", StatusChange("p1", "in_progress"))
    writer.submit("bad", StatusChange("p1", "queued"))
    writer.flush()
    # When it is scraped, Then the store's counters are there, moved by what was written
    # (at least: the writers of earlier tests in this process may still be finishing)
    after = _scraped(generate_latest(registry).decode())
    assert after["etl_results_writes_total"] - before["etl_results_writes_total"] >= 2
    assert after["etl_results_rejected_total"] - before["etl_results_rejected_total"] >= 1
    assert (writer.writes, writer.rejected) == (2, 1)
    assert after["etl_results_write_batches_total"] > before["etl_results_write_batches_total"]
    assert after["etl_results_write_seconds_total"] > before["etl_results_write_seconds_total"]
    assert "etl_results_dropped_total" in after and "etl_results_write_failures_total" in after


def _scraped(text: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("etl_results_")}
