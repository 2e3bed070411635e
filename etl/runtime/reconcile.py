"""The reconciler: re-send exactly the work a run is missing on a real broker.

The state store says what is unfinished (etl.runtime.runs.find_pending: shards still to fetch,
batches fetched but not cleaned, cleaned but not loaded). Work is missing when nobody holds
its lease and no message for it can still be on its way. A client cannot see every message
(RabbitMQ hides unacked ones), so "on its way" is judged as: the queue still holds messages
and the shard moved within `stale_after` seconds. When the queue is empty, or the shard has
not moved for that long, the work is re-sent. Re-sending is always safe (every step is
deduplicated); these rules only keep it from being wasteful.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from etl.runtime.actors import EtlActors
from etl.runtime.context import RunContext
from etl.core.names import task_key
from etl.brokers.base import Queues
from etl.runtime.runs import find_pending
from etl.stores.state.base import utcnow

log = logging.getLogger(__name__)

#: Seconds a shard may sit still, with messages in the queue, before its work is re-sent.
STALE_AFTER = 600.0


@dataclass
class Reconciled:
    """What a reconcile pass found and did, as (stage, shard, batch) triples."""

    sent: list[tuple[str, int, int]] = field(default_factory=list)
    leased: list[tuple[str, int, int]] = field(default_factory=list)  # someone works on it
    waiting: list[tuple[str, int, int]] = field(default_factory=list)  # likely queued
    queue_idle: bool = False


def _idle(queues: Queues, queue: str) -> bool:
    try:
        return queues.counts(queue).outstanding == 0
    except Exception as exc:  # noqa: BLE001 - broker away: cannot tell, so not idle
        log.warning("cannot count queue %s (%s: %s); taking it as busy", queue,
                    type(exc).__name__, exc)
        return False


def reconcile(ctx: RunContext, actors: EtlActors | None, *, queues: Queues | None, queue: str,
              stale_after: float = STALE_AFTER, force: bool = False,
              dry_run: bool = False) -> Reconciled:
    """Find the run's missing work and (unless `dry_run`) send it. `force` re-sends all
    unfinished work no live lease covers, queued or not."""
    state = ctx.state
    pending = find_pending(state, ctx.run_id)
    outcome = Reconciled()
    outcome.queue_idle = force or queues is None or _idle(queues, queue)
    checkpoints = {c.shard: c for c in state.list_checkpoints(ctx.run_id)}
    now = utcnow()
    for stage, items in (("load", pending.load), ("clean", pending.clean), ("fetch", pending.fetch)):
        for shard, batch in items:
            item = (stage, shard, batch)
            lease = state.get_lease(task_key(stage, ctx.run_id, shard, batch))
            if lease and lease.taken_by and lease.lease_until and lease.lease_until > now:
                outcome.leased.append(item)
                continue
            moved = checkpoints[shard].updated_at
            if not outcome.queue_idle and now - moved < timedelta(seconds=stale_after):
                outcome.waiting.append(item)
                continue
            outcome.sent.append(item)
            if not dry_run and actors is not None:
                actors.send_batch(ctx.run_id, shard, batch, from_stage=stage)
    if outcome.sent and not dry_run:
        log.info("run %s: re-sent %d missing step(s) (%d leased, %d probably queued)",
                 ctx.run_id, len(outcome.sent), len(outcome.leased), len(outcome.waiting))
    return outcome
