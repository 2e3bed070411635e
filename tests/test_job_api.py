"""The arq-style job API (results.client): enqueue_job, Job.result/abort/delete, with real
Dramatiq workers, over every result store (the conformance suite's `store` fixture) and on
the RabbitMQ and Redis brokers."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from results import JobNotFound, ResultStore
from results.client import JobFailed, ResultClient
from results.middleware import ResultRecorder
from tests.test_results_conformance import store  # noqa: F401 - the fixture, over every backend

#: What the actors of a test saw: (actor, args, kwargs) per call.
Calls = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


def _declare(broker: dramatiq.Broker, queue: str, calls: Calls) -> dict[str, dramatiq.Actor]:
    lock = threading.Lock()

    def add(a: int, b: int, **kwargs: Any) -> int:
        with lock:
            calls.append(("add", (a, b), kwargs))
        from results.middleware import report

        report(a + b)
        return a + b

    def boom() -> None:
        raise ValueError("no luck")

    def steps(count: int) -> None:
        """A long job in short steps (each a point where an abort or time limit lands)."""
        with lock:
            calls.append(("steps", (count,), {}))
        for _ in range(count):
            time.sleep(0.02)

    return {fn.__name__: dramatiq.actor(fn, broker=broker, queue_name=queue, max_retries=0,
                                        actor_name=f"{fn.__name__}_{queue}")
            for fn in (add, boom, steps)}


class Setup:
    """A broker with a ResultRecorder, actors on a queue of the test's own, a worker."""

    def __init__(self, broker: dramatiq.Broker, results: ResultStore, *,
                 recorder_after_retries: bool = False) -> None:
        self.broker, self.results, self.calls = broker, results, []  # type: Calls
        self.queue = f"jobapi_{uuid.uuid4().hex[:8]}"
        recorder = ResultRecorder(results, interval=0.02)
        if recorder_after_retries:  # as a user adding it without before=Retries does
            broker.add_middleware(recorder)
        else:
            broker.add_middleware(recorder, before=Retries)
        self.actors = _declare(broker, self.queue, self.calls)
        broker.declare_queue(f"{self.queue}_other")  # for _queue_name: the worker consumes it
        broker.emit_after("process_boot")  # starts TimeLimit's watcher, as `dramatiq` does
        self.worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        self.client = ResultClient(results, broker=broker)

    def __enter__(self) -> "Setup":
        self.worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        queues = [q for q in self.broker.get_declared_queues() if q.startswith(self.queue)]
        queues += [f"{self.queue}.DQ", f"{self.queue}.XQ"]
        if hasattr(self.broker, "channel"):  # RabbitMQ: the queues go with the test
            for queue in dict.fromkeys(queues):
                self.broker.channel.queue_delete(queue)
        self.broker.close()
        if hasattr(self.broker, "namespace"):  # Redis: the broker's keys go too
            for key in self.broker.client.scan_iter(match=f"{self.broker.namespace}:*"):
                self.broker.client.delete(key)


def _stub(results: ResultStore, **options: Any) -> Setup:
    return Setup(StubBroker(), results, **options)


def test_fifty_jobs_each_give_their_result_and_never_job_not_found(store: ResultStore) -> None:
    # Given a worker whose broker records results in the store
    with _stub(store) as s:
        # When 50 jobs are enqueued and each result is awaited at once
        jobs = [s.client.enqueue_job(s.actors["add"], i, 1) for i in range(50)]
        # Then every one gives its result: no JobNotFound for a record on its way
        assert [job.result(timeout=30, poll_delay=0.02) for job in jobs if job] == [
            i + 1 for i in range(50)]
        assert {job.status() for job in jobs if job} == {"completed"}
        info = jobs[0].info()  # type: ignore[union-attr]
        assert [t.status for t in info.history] == ["pending", "queued", "in_progress", "completed"]


def test_job_id_defer_and_expiry_options_never_reach_the_actor(store: ResultStore) -> None:
    with _stub(store) as s:
        add = s.actors["add"]
        # Given a job enqueued with its own id, deferred by a fraction of a second
        sent = time.monotonic()
        job = s.client.enqueue_job(add, 2, 3, _job_id="job-a", _defer_by=0.5, _expires=30)
        assert job is not None and job.id == "job-a"
        # When the same id is enqueued again before it expired
        again = s.client.enqueue_job("add_" + s.queue, 9, 9, _job_id="job-a")
        # Then the second is refused (None), the first runs after its delay, once, and the
        # options stay out of the actor's keywords
        assert again is None
        assert job.result(timeout=30, poll_delay=0.05) == 5
        assert job.info().started_at is not None and time.monotonic() - sent >= 0.5
        assert s.calls == [("add", (2, 3), {})]
        # And _defer_until defers to a time; a job not started within _expires is skipped
        until = datetime.now(timezone.utc) + timedelta(seconds=0.3)
        assert s.client.enqueue_job(add, 1, 1, _defer_until=until).result(timeout=30) == 2  # type: ignore[union-attr]
        stale = s.client.enqueue_job(add, 7, 7, _defer_by=0.4, _expires=0.001)
        assert stale is not None
        with pytest.raises(JobFailed, match="aborted"):
            stale.result(timeout=30, poll_delay=0.05)
        assert ("add", (7, 7), {}) not in s.calls
        # And _queue_name sends it to another queue, _results_ttl sets how long it is kept
        other = s.client.enqueue_job(add, 3, 3, _queue_name=f"{s.queue}_other", _results_ttl=60)
        assert other is not None and other.result(timeout=30) == 6
        info = other.info()
        assert info.queue == f"{s.queue}_other" and info.expires_at is not None
        assert 30 < (info.expires_at - info.created_at).total_seconds() <= 61
        # And deleting a job removes its record
        assert job.delete() and not job.delete()
        with pytest.raises(JobNotFound):
            job.status()


def test_senders_racing_with_one_new_job_id_send_it_once(store: ResultStore) -> None:
    with _stub(store) as s:
        # Given eight senders about to enqueue the same new job id at the same moment
        start = threading.Barrier(8)
        jobs: list[Any] = []
        lock = threading.Lock()

        def send() -> None:
            start.wait()
            job = s.client.enqueue_job(s.actors["add"], 1, 2, _job_id="only-once")
            with lock:
                jobs.append(job)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # When they are done, Then exactly one got a Job, the others None
        sent = [job for job in jobs if job is not None]
        assert len(jobs) == 8 and len(sent) == 1 and sent[0].id == "only-once"
        # And the actor ran once, its record has a single pending -> queued start
        assert sent[0].result(timeout=30, poll_delay=0.02) == 3
        assert s.calls == [("add", (1, 2), {})]
        assert [t.status for t in sent[0].info().history] == [
            "pending", "queued", "in_progress", "completed"]


class _FastWorkerElsewhere(dramatiq.Middleware):
    """Runs after the recorder's hooks: plays a fast worker of another process, that records
    a message's start and end as soon as it is enqueued."""

    def __init__(self, results: ResultStore) -> None:
        self.results = results

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        self.results.update_status(message.message_id, "in_progress", worker_id="elsewhere")
        self.results.update_status(message.message_id, "completed", result=3)


def test_a_claimed_job_id_is_recorded_by_its_sender_alone(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from results import open_results

    results = open_results(f"sqlite:///{tmp_path}/results.db")
    broker = StubBroker()
    recorder = ResultRecorder(results, interval=0.5)  # its batches written late
    broker.add_middleware(recorder)
    broker.add_middleware(_FastWorkerElsewhere(results))
    add = dramatiq.actor(lambda a, b: a + b, broker=broker, actor_name="add_claimed")
    client = ResultClient(results, broker=broker)
    try:
        # Given a job id sent and done by a fast worker of another process before this
        # process's recorder wrote anything
        job = client.enqueue_job(add, 1, 2, _job_id="claimed-1")
        # When the sender returns (its recorder flushed), Then the worker's end stands: the
        # recorder wrote no second "queued" over it
        assert job is not None and job.status() == "completed"
        assert [t.status for t in job.info().history] == [
            "pending", "queued", "in_progress", "completed"]
        # And a send that fails (after the recorder saw it) frees its id again: the claimed
        # record is deleted, and the recorder does not bring it back
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("broker went away")

        with monkeypatch.context() as patch:
            patch.setattr(broker.queues["default"], "put", refuse)
            with pytest.raises(ConnectionError):
                client.enqueue_job(add, 1, 2, _job_id="claimed-2")
        assert recorder.flush(timeout=5) and results.get("claimed-2") is None
        retried = client.enqueue_job(add, 1, 2, _job_id="claimed-2")
        assert retried is not None and retried.status() == "completed"
    finally:
        broker.close()


def test_abort_a_queued_job_and_a_running_one(store: ResultStore) -> None:
    with _stub(store) as s:
        # Given a long job running and one deferred (queued, not started)
        running = s.client.enqueue_job(s.actors["steps"], 1000)  # ~20 s if left alone
        queued = s.client.enqueue_job(s.actors["steps"], 5, _defer_by=0.5)
        assert running is not None and queued is not None
        _wait(lambda: running.status() == "in_progress")
        # When both are aborted
        started = time.monotonic()
        assert queued.abort(timeout=5) is True
        assert running.abort(timeout=5) is True
        # Then the running one stopped within a second, the queued one never ran
        assert time.monotonic() - started < 3
        time.sleep(1.0)  # past the queued one's delay: the worker skipped it
        assert s.calls.count(("steps", (5,), {})) == 0
        assert queued.status() == "aborted" and running.status() == "aborted"
        assert [t.status for t in running.info().history][-2:] == ["aborting", "aborted"]
        assert [t.status for t in queued.info().history] == ["pending", "queued", "aborted"]
        # And aborting a finished job says False
        done = s.client.enqueue_job(s.actors["add"], 1, 2)
        assert done is not None and done.result(timeout=30) == 3
        assert done.abort(timeout=1) is False


def test_time_limit_is_recorded_timeout_and_order_of_middleware_does_not_matter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from results import open_results

    results = open_results(f"sqlite:///{tmp_path}/results.db")
    # Given a recorder added after Retries (so its after-hook runs before Retries decides)
    with _stub(results, recorder_after_retries=True) as s:
        # When a job fails for good, and one exceeds its time limit
        failing = s.client.enqueue_job(s.actors["boom"])
        slow = s.actors["steps"].send_with_options(args=(1000,), time_limit=200)
        # Then the first is recorded failed (not left in_progress), the second timeout
        with pytest.raises(JobFailed, match="failed: ValueError: no luck"):
            failing.result(timeout=30)  # type: ignore[union-attr]
        with pytest.raises(JobFailed, match="timeout: TimeLimitExceeded"):
            s.client.job(slow.message_id).result(timeout=30)


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(params=["rabbitmq", "redis"])
def real_broker(request: pytest.FixtureRequest) -> Iterator[dramatiq.Broker]:
    if request.param == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        yield RabbitmqBroker(url=request.getfixturevalue("amqp_url"))
    else:
        from dramatiq.brokers.redis import RedisBroker

        yield RedisBroker(url=request.getfixturevalue("redis_url"),
                          namespace=f"jobapi-{uuid.uuid4().hex[:8]}")


def test_abort_on_real_brokers_with_real_workers(real_broker: dramatiq.Broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from results import open_results

    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    results = open_results(f"sqlite:///{tmp_path}/results.db")
    with Setup(real_broker, results) as s:
        # Given a running job and a deferred one on a real broker
        running = s.client.enqueue_job(s.actors["steps"], 1000)
        queued = s.client.enqueue_job(s.actors["steps"], 5, _defer_by=1)
        assert running is not None and queued is not None
        _wait(lambda: running.status() == "in_progress")
        # When both are aborted, Then both end aborted and the queued one never ran
        assert queued.abort(timeout=5) and running.abort(timeout=5)
        time.sleep(2.0)
        assert s.calls == [("steps", (1000,), {})]
        assert results.get_status(queued.id) == "aborted" == results.get_status(running.id)
        # And the worker goes on with new work
        assert s.client.enqueue_job(s.actors["add"], 4, 4).result(timeout=30) == 8  # type: ignore[union-attr]


def test_async_twins_wait_without_blocking_the_event_loop(store: ResultStore) -> None:
    import asyncio

    with _stub(store) as s:
        async def main() -> tuple[int, int]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            job = await s.client.enqueue_job_async(s.actors["steps"], 20)  # ~0.4 s of work
            assert job is not None
            await job.result_async(timeout=30, poll_delay=0.02)
            ticker.cancel()
            return ticks, await job.status_async() == "completed"

        ticks, completed = asyncio.run(main())
        # Then the loop kept running while the job was awaited
        assert completed and ticks >= 10
