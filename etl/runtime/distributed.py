"""Distributed mode, the sending side: enqueue a run on RabbitMQ or Redis and follow it.

`etl run` with a broker URL sends the run's work (all of it for a new run; what the
reconciler finds missing for a resumed one) and returns, or with `--wait` follows the
checkpoints until the run is complete. Workers (`etl worker`) do the work. While waiting,
a run that has gone quiet (queue empty, no live lease) without completing either has
failures (dead letters, failed shards: exit and say so) or lost messages (re-sent). A run
cancelled meanwhile (etl.runtime.cancel) is followed no further.
"""

from __future__ import annotations

import logging
import time

from etl.runtime.actors import EtlActors, declare_actors
from etl.runtime.cancel import is_cancelled
from etl.brokers import open_broker, queues_of
from etl.core.config import Settings
from etl.runtime.context import ContextCache, RunContext
from etl.runtime.planning import declare_planner
from etl.brokers.base import Queues, of_run
from etl.core.statuses import ShardStatus
from etl.runtime.reconcile import Reconciled, reconcile
from etl.runtime.runs import ProgressCallback, WorkOutcome, all_loaded
from results.middleware import ResultRecorder

log = logging.getLogger(__name__)

class Sender:
    """A broker connection with the ETL actors declared, for sending and inspecting."""

    def __init__(self, settings: Settings, *, results: object | None = None) -> None:
        self.settings = settings
        self.broker = open_broker(settings.broker_url)
        self.contexts = ContextCache(settings)
        self.actors: EtlActors = declare_actors(self.broker, self.contexts, queue=settings.queue,
                                                results=results)  # type: ignore[arg-type]
        self.queues: Queues = queues_of(self.broker)
        self.planner = declare_planner(self.broker, self.contexts, queue=settings.queue)

    def close(self) -> None:
        for middleware in self.broker.middleware:
            if isinstance(middleware, ResultRecorder):
                middleware.flush()  # the "queued" records, before this process exits
        self.queues.close()
        self.broker.close()

    def queue_of(self, ctx: RunContext) -> str:
        """The queue the run's messages travel on: its pipeline's, or the `queue` setting."""
        return self.actors.queue_for(ctx.pipeline)

    def dead_letters_of(self, ctx: RunContext) -> int:
        return len(self.queues.dead_letters(self.queue_of(ctx), limit=100_000,
                                            match=of_run(ctx.run_id)))

    def start(self, ctx: RunContext, *, created: bool) -> Reconciled:
        """Send a new run's work, or what a resumed run is missing."""
        self.contexts.register(ctx)
        return reconcile(ctx, self.actors, queues=self.queues, queue=self.queue_of(ctx),
                         force=created)

    def wait(self, ctx: RunContext, *, poll: float = 0.25, quiet_polls: int = 3,
             on_progress: ProgressCallback | None = None,
             timeout: float | None = None) -> WorkOutcome:
        """Follow the run until it completes or only failures are left. The checkpoints are
        read every 50 ms at first, slowing to every `poll` seconds (a short run is not kept
        waiting for a slow poll); the queue and leases are looked at once a second."""
        started = time.monotonic()
        quiet, resent, looked = 0, 0, started
        while True:
            checkpoints = ctx.state.list_checkpoints(ctx.run_id)
            if on_progress:
                on_progress(checkpoints)
            now = time.monotonic()
            if all_loaded(checkpoints, ctx.run.shards):
                return WorkOutcome(True, now - started, checkpoints, resent=resent)
            if timeout is not None and now - started > timeout:
                return WorkOutcome(False, now - started, checkpoints, resent=resent)
            pause = min(poll, 0.05 + (now - started) / 20)
            if now - looked < 1.0:
                time.sleep(pause)
                continue
            looked = now
            if is_cancelled(ctx.state, ctx.run_id):
                return WorkOutcome(False, now - started, checkpoints, resent=resent, cancelled=True)
            look = reconcile(ctx, None, queues=self.queues, queue=self.queue_of(ctx), dry_run=True)
            quiet = quiet + 1 if look.queue_idle and not look.leased else 0
            if quiet >= quiet_polls:
                dead = self.dead_letters_of(ctx)
                if dead or any(c.status == ShardStatus.FAILED and not c.complete for c in checkpoints):
                    return WorkOutcome(False, time.monotonic() - started, checkpoints,
                                      dead_letters=dead, resent=resent)
                again = reconcile(ctx, self.actors, queues=self.queues,
                                  queue=self.queue_of(ctx), force=True)
                resent += len(again.sent)
                log.warning("run %s went quiet unfinished: re-sent %d lost step(s)",
                            ctx.run_id, len(again.sent))
                quiet = 0
            time.sleep(pause)
