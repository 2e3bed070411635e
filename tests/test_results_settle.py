"""No record left open after its message was acked, including when its worker is SIGKILLed
between the ack and the recorder's batched write: a job's end is written before its ack,
and a completed run settles the records of its steps (over every result store)."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Middleware

from results import ResultStore
from results.changes import SETTLED_NOTE, NewRecord, StatusChange
from results.middleware import RECORD_BEFORE_ACK, ResultRecorder
from results.models import JobResult, JobStatus, Transition, utcnow
from etl.runtime.run_record import settle_step_records
from tests.test_results_conformance import store  # noqa: F401 - the fixture, over every backend


class StatusAtAck(Middleware):
    """Reads each message's record from the store as its ack happens."""

    def __init__(self, results: ResultStore) -> None:
        self.results, self.seen = results, {}  # type: ResultStore, dict[str, str | None]

    def after_ack(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.seen[message.actor_name] = self.results.get_status(message.message_id)


def test_a_job_end_is_stored_before_its_ack_and_an_etl_step_only_when_it_asks(
        store: ResultStore) -> None:  # noqa: F811
    # Given a recorder batching its writes a whole second, and three actors: a plain job,
    # an ETL step, and an ETL step asking for its end before its ack (the run's last step)
    broker = StubBroker()
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(ResultRecorder(store, interval=1.0))
    at_ack = StatusAtAck(store)
    broker.add_middleware(at_ack)
    queue = f"settle_{uuid.uuid4().hex[:8]}"

    def job() -> None: ...

    def etl_step() -> None: ...

    def etl_last() -> None:
        CurrentMessage.get_current_message().options[RECORD_BEFORE_ACK] = 1

    actors = [dramatiq.actor(fn, broker=broker, queue_name=queue, actor_name=fn.__name__)
              for fn in (job, etl_step, etl_last)]
    # When each is sent and worked
    for actor in actors:
        actor.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue)
        worker.join()
    finally:
        worker.stop()
    # Then the job and the last step were completed in the store when acked; the plain
    # step's end was still in the writer's batch (written later: the run settles it)
    assert at_ack.seen["job"] == at_ack.seen["etl_last"] == "completed"
    assert at_ack.seen["etl_step"] != "completed"
    broker.close()


def _record(store: ResultStore, run_id: str, status: JobStatus) -> str:
    now = utcnow()
    steps = [JobStatus.PENDING, JobStatus.QUEUED]
    if status is JobStatus.RETRYING:
        steps += [JobStatus.IN_PROGRESS, JobStatus.RETRYING]
    elif status is not JobStatus.QUEUED:
        steps += [JobStatus.IN_PROGRESS] + ([status] if status is not JobStatus.IN_PROGRESS else [])
    job = JobResult(job_id=uuid.uuid4().hex, function="etl_load", status=status.value,
                    queue="etl", run_id=run_id, args=[run_id, 0, 0], stage="load",
                    created_at=now, queued_at=now,
                    started_at=now if status is not JobStatus.QUEUED else None,
                    history=[Transition(s.value, now) for s in steps])
    store.write_many([NewRecord(job)])
    return job.job_id


def test_a_completed_run_settles_the_step_records_its_workers_left_open(
        store: ResultStore) -> None:  # noqa: F811
    # Given a completed run whose records were left open: a worker killed after its ack
    # (in_progress), a message re-sent by the reconciler (queued), one killed after a retry
    # was decided (retrying), one done, one still running (skipped), the run's own record,
    # and a record of another run
    run_id, other = f"run-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    ids: dict[str, Any] = {s: _record(store, run_id, JobStatus(s))
                           for s in ("in_progress", "queued", "retrying", "completed")}
    running = _record(store, run_id, JobStatus.IN_PROGRESS)
    elsewhere = _record(store, other, JobStatus.IN_PROGRESS)
    own = JobResult(job_id=run_id, function="etl.run", status="in_progress", queue="etl",
                    run_id=run_id, created_at=utcnow(),
                    history=[Transition("in_progress", utcnow())])
    store.write_many([NewRecord(own)])
    # When the run's completion settles them
    settled = settle_step_records(store, run_id, skip={running})
    # Then the three open steps ended completed, saying why; nothing else moved
    assert settled == 3
    for status in ("in_progress", "queued", "retrying"):
        job = store.get(ids[status])
        assert job is not None and job.status == "completed"
        assert job.history[-1].note == SETTLED_NOTE
    assert store.get(ids["completed"]).history[-1].note != SETTLED_NOTE  # type: ignore[union-attr]
    assert store.get_status(running) == store.get_status(elsewhere) == "in_progress"
    assert store.get_status(run_id) == "in_progress"
    # And a worker that was only slow writes its start and end late: they fill in what it
    # knows (worker, result), neither refused nor a second start or end
    late = store.write_many([
        StatusChange(ids["queued"], "in_progress", None, {"worker_id": "host:1:w0"}),
        StatusChange(ids["queued"], "completed", None, {"result": {"rows": 5}},
                     catch_up=True)])
    assert late == [None, None]
    job = store.get(ids["queued"])
    assert job is not None and job.status == "completed"
    assert job.result == {"rows": 5} and job.worker_id == "host:1:w0"
    assert [t.status for t in job.history] == ["pending", "queued", "in_progress", "completed"]
    assert job.history[-1].note == SETTLED_NOTE
    # And a settle again finds nothing left
    assert settle_step_records(store, run_id, skip={running}) == 0
