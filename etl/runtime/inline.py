"""A batch's later steps run in the delivery of its first (embedded mode).

When one process does every step of a batch, the message of each later step only hands
the batch from one of its threads to another: ~1-3 ms of CPU per batch in Dramatiq's
queues, hooks and thread wake-ups (the demo at 180 vs 20 batches, 2026-12-07). So the run
sends a batch's first step, and its delivery runs the others in turn, then the shard's next
batches for up to CHAIN_S seconds (then the next batch is sent as a message). Nothing else
changes: each step still takes its own lease and commits through it, and gets a result
record of its own (the ResultRecorder's hooks run for the message it would have had, so
`etl results` shows fetch, clean and load as before). They run from this middleware's
after-hook, once the delivered step's own end is recorded and while Dramatiq's time limit
still holds for the delivery.

A step that cannot run here becomes the message it would have been. Its lease held
elsewhere: deferred, as a delivered step is. It raised: ended as Dramatiq's worker ends a
delivery that raised, through the same middleware (Retries sends it again with this
attempt counted, or fails it; the recorder and etl.runtime.middleware.ErrorLog record
either), a failed one among the broker's dead letters (embedded mode's StubBroker: `etl
run` counts them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries

from etl.core.logs import cause_of
from etl.core.names import stage_of_actor
from etl.runtime.middleware import ErrorLog
from results.middleware import ResultRecorder, report

log = logging.getLogger(__name__)

#: The step that follows each step of a batch.
NEXT = {"fetch": "clean", "clean": "load"}
#: Option an actor sets on the message it ran when the batch's later steps may follow it:
#: {"more": whether the shard has a next batch to fetch}.
FOLLOW_OPTION = "etl_follow"
#: Seconds one delivery goes on to the shard's next batches. Well within Dramatiq's time
#: limit of a message (etl.runtime.actors.TIME_LIMIT_MS); the per-message cost it saves is
#: a millisecond or two per batch, nothing next to a minute's work.
CHAIN_S = 60.0


@dataclass
class Step:
    """What one attempt at a step came to: the result it reports, its progress, what it
    hands on once its lease is released, and whether the batch's later steps follow it
    (not when it was deferred or its run cancelled)."""

    result: dict[str, Any]
    progress: float | None = None
    after: Callable[[], None] | None = None
    follow: bool = True
    more: bool = False  # (a fetch, inline) the shard has a next batch to fetch


class Inline(Middleware):
    """After a step's delivery marked FOLLOW_OPTION, runs the batch's later steps, for
    messages that are never sent. Added before the ResultRecorder (its after-hook then runs
    after the recorder's) and after TimeLimit (before that one's). On a StubBroker only:
    a failed step is put among its dead letters."""

    def __init__(self, broker: StubBroker,
                 message: Callable[[str, str, int, int], dramatiq.Message],
                 send: Callable[[str, int, int], None],
                 attempts: Mapping[str, Callable[[str, int, int, Any], Step]], *,
                 defer: Callable[[dramatiq.Broker, Any, str, float], dict[str, Any]]) -> None:
        self.broker, self.message, self.attempts, self.defer = broker, message, attempts, defer
        self.send = send
        self.stopping = False  # the worker is shutting down: no more batches are chained
        self.recorder = next((m for m in broker.middleware if isinstance(m, ResultRecorder)), None)
        #: The after-hooks that end a delivery that raised, in the order the worker runs them.
        self.after_error = [m for m in reversed(broker.middleware)
                            if isinstance(m, (Retries, ResultRecorder, ErrorLog))]
        if not isinstance(broker, StubBroker):
            raise TypeError("inline steps run on the embedded StubBroker only")

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.stopping = True

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        follow = message.options.pop(FOLLOW_OPTION, None)
        stage = stage_of_actor(message.actor_name)
        if follow is not None and exception is None and stage is not None:
            self.follow(stage, *message.args[:3], more=bool(follow.get("more")))

    def follow(self, stage: str, run_id: str, shard: int, batch: int, *, more: bool) -> None:
        """Run the steps of the batch after `stage`, until one does not let the next follow;
        then, when `more`, the shard's next batch: here while the chain is young and whole,
        else as a message."""
        started = time.monotonic()
        while True:
            whole = False
            try:
                later = NEXT.get(stage)
                while later is not None and self._step(later, run_id, shard, batch).follow:
                    later = NEXT.get(later)
                whole = later is None
            finally:  # (an interrupt too: the next batch is never left unsent)
                if more and not (whole and not self.stopping
                                 and time.monotonic() - started < CHAIN_S):
                    log.debug("run %s shard %s: batch %s sent as a message of its own", run_id,
                              shard, batch + 1)
                    self.send(run_id, shard, batch + 1)
                    more = False
            if not more:
                return
            batch += 1
            fetched = self._step("fetch", run_id, shard, batch)
            if not fetched.follow:
                return
            stage, more = "fetch", fetched.more

    def _step(self, stage: str, run_id: str, shard: int, batch: int) -> Step:
        message = self.message(stage, run_id, shard, batch)
        recorder = self.recorder
        if recorder is not None:  # as when it is sent, then delivered
            recorder.before_enqueue(self.broker, message, 0)
            recorder.before_process_message(self.broker, message)
        try:
            done = self.attempts[stage](run_id, shard, batch, message)
        except Exception as exc:  # noqa: BLE001 - as the worker ends a delivery that raised
            return self._raised(message, exc)
        if recorder is not None:
            report(done.result, progress=done.progress)
            recorder.after_process_message(self.broker, message)
        return done

    def _raised(self, message: dramatiq.Message, exc: Exception) -> Step:
        """End a step that raised as Dramatiq's worker ends such a delivery: the after-hooks
        of Retries (which sends it again, this attempt counted, or fails it), the recorder
        and ErrorLog, in the broker's order; then the ack, or the nack that makes a failed
        message a dead letter (the StubBroker's list, as its consumer keeps it)."""
        proxy = MessageProxy(message)
        proxy.stuff_exception(exc)
        for hook in self.after_error:
            hook.after_process_message(self.broker, proxy, exception=exc)
        if proxy.failed:
            self.broker.dead_letters_by_queue[message.queue_name].append(proxy)
        self.broker.emit_after("nack" if proxy.failed else "ack", proxy)
        return Step({"failed": cause_of(exc)}, follow=False)
