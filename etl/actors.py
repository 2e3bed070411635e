"""The Dramatiq actors: fetch -> clean -> load, one message per batch step.

Messages carry (run_id, shard, batch) only, never data (claim check). Each batch travels as
a Dramatiq pipeline of three messages (results are not piped on: each step finds its input
through the state store); fetch, once its batch is recorded, starts the
pipeline of the shard's next batch. Actors are declared on a given broker by `declare_actors`
so the same code serves the in-process StubBroker of `etl run` and real brokers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dramatiq
from dramatiq.middleware import Retries

from etl import batches
from etl.context import ContextCache
from etl.errors import EtlError
from etl.middleware import ErrorLog
from etl.runs import finalize_if_complete
from results.base import ResultStore
from results.middleware import ResultRecorder, report

log = logging.getLogger(__name__)

QUEUE = "etl"

#: Worker priority: finish what is in flight before starting more (lower runs first).
PRIORITY = {"load": 0, "clean": 10, "fetch": 20}


@dataclass
class EtlActors:
    """The actors declared on one broker, and the way to start a batch."""

    fetch: dramatiq.Actor
    clean: dramatiq.Actor
    load: dramatiq.Actor
    contexts: ContextCache

    def send_batch(self, run_id: str, shard: int, batch: int, *, from_stage: str = "fetch") -> None:
        """Enqueue the pipeline of one batch, starting at `from_stage` (resume)."""
        retry = self.contexts.get(run_id).pipeline.retry
        options = {"max_retries": retry.max_retries, "min_backoff": retry.min_backoff_ms,
                   "max_backoff": retry.max_backoff_ms}
        steps = ("fetch", "clean", "load")
        messages = [getattr(self, step).message_with_options(args=(run_id, shard, batch), **options)
                    for step in steps[steps.index(from_stage):]]
        dramatiq.pipeline(messages, broker=self.fetch.broker).run()


def declare_actors(broker: dramatiq.Broker, contexts: ContextCache, *,
                   queue: str = QUEUE, results: ResultStore | None = None) -> EtlActors:
    """Declare the three actors on `broker` and add the toolkit's middleware to it (with a
    ResultRecorder when given a result store)."""
    if not any(isinstance(m, ErrorLog) for m in broker.middleware):
        broker.add_middleware(ErrorLog(contexts), before=Retries)
    if results is not None and not any(isinstance(m, ResultRecorder) for m in broker.middleware):
        broker.add_middleware(ResultRecorder(results), before=Retries)
    holder: dict[str, EtlActors] = {}

    def etl_fetch(run_id: str, shard: int, batch: int) -> None:
        ctx = contexts.get(run_id)
        outcome = batches.fetch(ctx, shard, batch)
        if outcome.fetch_next:
            holder["actors"].send_batch(run_id, shard, batch + 1)
        payload = outcome.payload
        report({"rows": payload.rows, "key": payload.key, "more": outcome.fetch_next}
               if payload else {"rows": 0, "skipped": "nothing left to fetch"},
               progress=outcome.shard_progress)

    def etl_clean(run_id: str, shard: int, batch: int) -> None:
        rows = batches.clean(contexts.get(run_id), shard, batch)
        report({"rows": rows} if rows is not None else {"skipped": "already cleaned (dedup)"})

    def etl_load(run_id: str, shard: int, batch: int) -> None:
        ctx = contexts.get(run_id)
        rows = batches.load(ctx, shard, batch)
        if rows is not None:
            finalize_if_complete(ctx, shard=shard)
        report({"rows": rows} if rows is not None else {"skipped": "already loaded (dedup)"})

    def declare(fn, stage: str) -> dramatiq.Actor:  # type: ignore[no-untyped-def]
        return dramatiq.actor(fn, broker=broker, queue_name=queue, priority=PRIORITY[stage],
                              throws=(EtlError,), pipe_ignore=True)

    actors = EtlActors(fetch=declare(etl_fetch, "fetch"), clean=declare(etl_clean, "clean"),
                       load=declare(etl_load, "load"), contexts=contexts)
    holder["actors"] = actors
    return actors
