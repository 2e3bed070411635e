"""Embedded mode: run a pipeline in this process on Dramatiq's StubBroker and worker threads.

The same actors as distributed mode, with no services: the broker is in memory, so after a
crash nothing of it survives; what survives is the state store, and `find_pending` turns it
back into exactly the messages still needed. That is how `etl run` resumes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import dramatiq
from dramatiq.brokers.stub import StubBroker

from etl.actors import QUEUE, declare_actors
from etl.context import ContextCache, RunContext
from etl.runs import find_pending, finalize_if_complete
from etl.state import Checkpoint

log = logging.getLogger(__name__)

ProgressCallback = Callable[[list[Checkpoint]], None]


@dataclass
class EmbeddedResult:
    """How an embedded run ended."""

    completed: bool
    dead_letters: int
    elapsed: float
    checkpoints: list[Checkpoint]


def run_embedded(ctx: RunContext, *, threads: int = 4, poll: float = 0.2,
                 on_progress: ProgressCallback | None = None) -> EmbeddedResult:
    """Work the run's pending batches to the end (or until only failures remain)."""
    started = time.perf_counter()
    broker = StubBroker()
    broker.emit_after("process_boot")
    contexts = ContextCache()
    contexts.register(ctx)
    actors = declare_actors(broker, contexts)
    pending = find_pending(ctx.state, ctx.run_id)
    log.info("run %s: %d fetch, %d clean, %d load pipelines to start", ctx.run_id,
             len(pending.fetch), len(pending.clean), len(pending.load))
    for shard, batch in pending.load:
        actors.send_batch(ctx.run_id, shard, batch, from_stage="load")
    for shard, batch in pending.clean:
        actors.send_batch(ctx.run_id, shard, batch, from_stage="clean")
    for shard, batch in pending.fetch:
        actors.send_batch(ctx.run_id, shard, batch)

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    done = threading.Event()

    def wait_for_queue() -> None:
        try:
            broker.join(QUEUE, fail_fast=False)
        finally:
            done.set()

    threading.Thread(target=wait_for_queue, name="etl-join", daemon=True).start()
    try:
        while not done.wait(poll):
            if on_progress:
                on_progress(ctx.state.list_checkpoints(ctx.run_id))
    finally:
        worker.stop()
        broker.close()
    checkpoints = ctx.state.list_checkpoints(ctx.run_id)
    if on_progress:
        on_progress(checkpoints)
    completed = finalize_if_complete(ctx)
    if not completed:
        ctx.state.set_run_status(ctx.run_id, "failed")
    dead = len(broker.dead_letters_by_queue.get(QUEUE, []))
    return EmbeddedResult(completed=completed, dead_letters=dead,
                          elapsed=time.perf_counter() - started, checkpoints=checkpoints)
