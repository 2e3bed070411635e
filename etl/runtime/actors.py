"""The Dramatiq actors: fetch -> clean -> load, one message per batch step.

Messages carry (run_id, shard, batch) only, never data (claim check). Each batch travels as
a Dramatiq pipeline of three messages (results are not piped on: each step finds its input
through the state store); fetch, once its batch is recorded, starts the pipeline of the
shard's next batch. Actors are declared on a given broker by `declare_actors`, so the same
code serves the in-process StubBroker of `etl run` and RabbitMQ or Redis under `etl worker`.

Every step holds the lease of its task (etl.runtime.leases) while it works and commits through that
lease's fence. A message whose task is leased by another live worker, or whose lease was
lost before the commit, is deferred: re-enqueued with a delay, never dropped, never run
alongside its twin. Retries follow the pipeline's RetryPolicy (Dramatiq's Retries, through
`retry_when`); exhausted or permanent failures go to the dead-letter queue. A step of a
cancelled run (etl.runtime.cancel) is acknowledged without work and without piping on.

Embedded mode sends only a batch's first step (`inline`): its later steps, then the shard's
next batches, run in the same delivery, each under its own lease and commit and with a
result record of its own, as if its message had come (etl.runtime.inline). A step that
cannot run there (its lease is busy, or it raised) goes on as the message it would have been.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Callable

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware, Retries

from etl.runtime import batches
from etl.runtime.cancel import CancelWatch
from etl.runtime.context import ContextCache
from etl.core.errors import USER_ERRORS, LeaseLost, is_environment_error
from etl.core.names import DEFERRED_OPTION, actor_name, task_fingerprint, task_key
from etl.runtime.inline import FOLLOW_OPTION, Inline, Step
from etl.runtime.leases import LeaseBusy, LeaseKeeper, lease_ttl
from etl.stores import results_ttl
from etl.runtime.middleware import ErrorLog
from etl.pipeline import Pipeline, RetryPolicy
from etl.runtime.run_record import settle_step_records
from etl.runtime.runs import finalize_if_complete
from etl.runtime.settled import SettledSteps
from results.base import ResultStore
from results.middleware import RECORD_BEFORE_ACK, ResultRecorder, report

log = logging.getLogger(__name__)

QUEUE = "etl"

#: Worker priority: finish what is in flight before starting more (lower runs first).
PRIORITY = {"load": 0, "clean": 10, "fetch": 20}

#: Longest a batch step may run (Dramatiq's TimeLimit). Below RabbitMQ's default consumer
#: timeout (30 min) with room to spare, so a slow batch fails and is retried instead of
#: having the broker close the channel under every message the worker holds.
TIME_LIMIT_MS = 10 * 60 * 1000

#: Longest a load waits for its turn on a destination loaded one batch at a time
#: (etl.sinks.base.SerialCommits); then it is deferred like a busy task.
COMMIT_PATIENCE_S = 120.0

_DONE = {"clean": "cleaned", "load": "loaded"}
_RETRY_ATTR = "_etl_retry"  # (permanent, max_retries) set on an exception by the actor


def classify(exc: BaseException, policy: RetryPolicy) -> None:
    """Mark `exc` with the pipeline's verdict, read back by `should_retry`."""
    setattr(exc, _RETRY_ATTR, (isinstance(exc, policy.permanent) or is_environment_error(exc),
                               policy.max_retries))


def should_retry(retries: int, exc: BaseException) -> bool:
    """Dramatiq's `retry_when`: retry unless permanent or out of retries. An exception raised
    before the run's policy was known is permanent if it is one of ours (USER_ERRORS). A full
    disk, a read-only file system or a missing permission is never retried: the same write a
    moment later meets the same refusal, and five retries per batch only flood the log."""
    permanent, max_retries = getattr(exc, _RETRY_ATTR, (
        isinstance(exc, USER_ERRORS) or is_environment_error(exc), RetryPolicy().max_retries))
    return not permanent and retries < max_retries


@dataclass
class EtlActors:
    """The actors declared on one broker, and the way to start a batch."""

    fetch: dramatiq.Actor
    clean: dramatiq.Actor
    load: dramatiq.Actor
    contexts: ContextCache
    #: Send each pipeline's messages to its own `Pipeline.queue` (False: all on the actors'
    #: queue, as in embedded mode where one process does everything).
    routed: bool = True
    #: Send a batch's first step only; the later ones run in its delivery (embedded mode).
    inline: bool = False

    def queue_for(self, pipeline: Pipeline) -> str:
        """The queue a pipeline's messages travel on."""
        return pipeline.queue_or(self.fetch.queue_name) if self.routed else self.fetch.queue_name

    def message(self, stage: str, run_id: str, shard: int, batch: int) -> dramatiq.Message:
        """The message of one step, with the run's retry policy (not sent)."""
        retry = self.contexts.get(run_id).pipeline.retry
        return getattr(self, stage).message_with_options(
            args=(run_id, shard, batch), min_backoff=retry.min_backoff_ms,
            max_backoff=retry.max_backoff_ms, max_retries=retry.max_retries)

    def send_batch(self, run_id: str, shard: int, batch: int, *, from_stage: str = "fetch") -> None:
        """Enqueue the pipeline of one batch, starting at `from_stage` (resume). The messages
        go to the run's queue; retries, deferrals and the next steps follow them there.
        `inline`: only the first step's message (its delivery runs the later steps)."""
        broker, queue = self.fetch.broker, self.queue_for(self.contexts.get(run_id).pipeline)
        if queue not in broker.get_declared_queues():
            broker.declare_queue(queue)
        steps = ("fetch", "clean", "load")
        messages = [self.message(step, run_id, shard, batch)
                    for step in steps[steps.index(from_stage):]]
        if queue != self.fetch.queue_name:  # (a copy of each message: only when routed)
            messages = [message.copy(queue_name=queue) for message in messages]
        if self.inline:
            broker.enqueue(messages[0])
            return
        dramatiq.pipeline(messages, broker=broker).run()


def _defer(broker: dramatiq.Broker, step: Any, reason: str, seconds: float) -> dict[str, Any]:
    """Re-enqueue the message of `step` (the current delivery's, or one run inline) after
    `seconds` (plus jitter); this delivery then ends without piping on, since the copy
    carries the rest of the pipeline."""
    if step is None:
        raise RuntimeError("deferring needs the CurrentMessage middleware")
    delay_ms = int(max(0.2, seconds) * 1000 * random.uniform(1.0, 1.25))
    message = getattr(step, "_message", step)
    copy = message.copy(options={DEFERRED_OPTION: reason})
    broker.enqueue(copy, delay=delay_ms)
    step.options.pop("pipe_target", None)
    log.info("%s %s deferred %.1f s: %s", message.actor_name, message.args, delay_ms / 1000, reason)
    return {"deferred": reason}


def declare_actors(broker: dramatiq.Broker, contexts: ContextCache, *,
                   queue: str = QUEUE, results: ResultStore | None = None,
                   leases: LeaseKeeper | None = None, metrics: Middleware | None = None,
                   routed: bool = True, inline: bool = False,
                   record_interval: float = 0.05) -> EtlActors:
    """Declare the three actors on `queue` of `broker` and add the toolkit's middleware to it
    (with a ResultRecorder when given a result store, writing its records every
    `record_interval` seconds, and `metrics` when given). Leases are taken through `leases`,
    or a keeper made on first use from the run's state store.
    `routed`: send each run to its pipeline's own queue when it names one.
    `inline`: run a batch's later steps in the delivery of its first (one process does
    every step of a batch: embedded mode)."""
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    if not any(isinstance(m, ErrorLog) for m in broker.middleware):
        broker.add_middleware(ErrorLog(contexts), before=Retries)
    if results is not None and not any(isinstance(m, ResultRecorder) for m in broker.middleware):
        broker.add_middleware(ResultRecorder(results, ttl=results_ttl(contexts.settings),
                                             interval=record_interval), before=Retries)
    if metrics is not None and metrics not in broker.middleware:
        broker.add_middleware(metrics, before=Retries)  # its after-hook: after Retries, before the recorder
    holder: dict[str, Any] = {"leases": leases}
    settled = SettledSteps()  # steps the ledger said were done: their duplicates need no read
    watch = CancelWatch()  # cancelled runs, each read at most once a second

    def keeper(state: Any) -> LeaseKeeper:
        if holder["leases"] is None:
            holder["leases"] = LeaseKeeper(state, ttl=lease_ttl(contexts.settings))
        return holder["leases"]

    def leased(stage: str, work: Callable[..., dict[str, Any]]) -> Callable[..., Step]:
        """One attempt at `stage` of a batch for `message` (the delivery's, or one run
        inline): settled duplicates and cancelled runs without the lease, else the work
        under its lease. A busy or lost lease defers the message; an error is classified
        for Retries and raised."""
        duplicate = f"already {_DONE.get(stage, 'done')} (dedup)"

        def attempt(run_id: str, shard: int, batch: int, message: Any) -> Step:
            step = (stage, run_id, shard, batch)
            if step in settled:  # the ledger said so before, and it only ever grows
                return Step({"skipped": duplicate})  # without a read, without the lease
            ctx = contexts.get(run_id)
            if watch.cancelled(run_id, ctx.state):  # acked without work, not piped on
                if message is not None:
                    message.options.pop("pipe_target", None)
                return Step({"cancelled": f"run {run_id} cancelled"}, follow=False)
            if stage != "fetch" and ctx.state.is_done(task_fingerprint(stage, run_id, shard, batch)):
                settled.add(step)
                return Step({"skipped": duplicate})  # a duplicate: settled without the lease
            try:
                with keeper(ctx.state).hold(task_key(stage, run_id, shard, batch)) as fence:
                    result = work(ctx, shard, batch, fence, message)
            except LeaseBusy as busy:
                # the holder usually finishes long before its lease would expire: look again soon
                wait = min(busy.seconds_left, max(1.0, keeper(ctx.state).ttl / 10))
                return Step(_defer(broker, message, f"lease held by {busy.holder}", wait),
                            follow=False)
            except LeaseLost as lost:
                return Step(_defer(broker, message, str(lost), keeper(ctx.state).ttl / 3),
                            follow=False)
            except BaseException as exc:
                classify(exc, ctx.pipeline.retry)
                raise
            return Step(result, progress=result.pop("_progress", None),
                        after=result.pop("_after", None), more=result.pop("_more", False))

        return attempt

    def delivered(stage: str, attempt: Callable[..., Step]) -> Callable[[str, int, int], None]:
        """The actor: one attempt for the message being delivered, then what it hands on
        (the next batch); inline, it lets the batch's later steps, and the shard's next
        batches, follow (Inline)."""

        def actor(run_id: str, shard: int, batch: int) -> None:
            proxy = CurrentMessage.get_current_message()
            if proxy is not None:
                proxy.options.pop(DEFERRED_OPTION, None)
            done = attempt(run_id, shard, batch, proxy)
            if done.after is not None:
                done.after()  # work done after the lease is released (send the next batch)
            if inline and done.follow:  # the batch's later steps follow (Inline)
                if proxy is not None:
                    proxy.options[FOLLOW_OPTION] = {"more": done.more}
                elif done.more:
                    holder["actors"].send_batch(run_id, shard, batch + 1)
            report(done.result, progress=done.progress)

        actor.__name__ = actor_name(stage)
        return actor

    def fetch(ctx: Any, shard: int, batch: int, fence: Any, message: Any) -> dict[str, Any]:
        outcome = batches.fetch(ctx, shard, batch, fence=fence)
        payload = outcome.payload
        result: dict[str, Any] = ({"rows": payload.rows, "key": payload.key,
                                   "more": outcome.fetch_next}
                                  if payload else {"rows": 0, "skipped": "nothing left to fetch"})
        if outcome.fetch_next and inline:
            result["_more"] = True  # the next batch follows in this delivery (Inline)
        elif outcome.fetch_next:
            result["_after"] = lambda: holder["actors"].send_batch(ctx.run_id, shard, batch + 1)
        result["_progress"] = outcome.shard_progress
        return result

    def clean(ctx: Any, shard: int, batch: int, fence: Any, message: Any) -> dict[str, Any]:
        counts = batches.clean(ctx, shard, batch, fence=fence)
        if counts is None:
            return {"skipped": "already cleaned (dedup)"}
        return {"rows": counts[0], "quarantined": counts[1]}

    def load(ctx: Any, shard: int, batch: int, fence: Any, message: Any) -> dict[str, Any]:
        rows = batches.load(ctx, shard, batch, fence=fence, queue=lambda name: keeper(
            ctx.state).queue_on(name, patience=COMMIT_PATIENCE_S))
        if rows is not None and finalize_if_complete(ctx, shard=shard) and results is not None:
            # The run is complete: settle the records its workers left open, and write the
            # ends of this step and of the delivery it runs in (inline) before the ack (no
            # later step would settle them).
            ours = [m for m in (message, CurrentMessage.get_current_message()) if m is not None]
            settle_step_records(results, ctx.run_id, skip={m.message_id for m in ours})
            for each in ours:
                each.options[RECORD_BEFORE_ACK] = 1
        return {"rows": rows} if rows is not None else {"skipped": "already loaded (dedup)"}

    attempts = {"fetch": leased("fetch", fetch), "clean": leased("clean", clean),
                "load": leased("load", load)}

    def declare(stage: str) -> dramatiq.Actor:
        return dramatiq.actor(delivered(stage, attempts[stage]), broker=broker, queue_name=queue,
                              priority=PRIORITY[stage], retry_when=should_retry,
                              time_limit=TIME_LIMIT_MS, pipe_ignore=True)

    actors = EtlActors(fetch=declare("fetch"), clean=declare("clean"), load=declare("load"),
                       contexts=contexts, routed=routed, inline=inline)
    holder["actors"] = actors
    if inline and not any(isinstance(m, Inline) for m in broker.middleware):
        broker.add_middleware(Inline(broker, actors.message, actors.send_batch, attempts,
                                     defer=_defer),
                              before=ResultRecorder if results is not None else Retries)
    return actors
