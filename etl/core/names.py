"""Deterministic object keys: the same batch always lands under the same key, so writing it
again after a crash replaces the object instead of adding a second copy."""

from __future__ import annotations


def _batch_path(run_id: str, kind: str, shard: int, batch: int) -> str:
    return f"runs/{run_id}/{kind}/shard={shard:05d}/batch={batch:06d}.parquet"


def raw_key(run_id: str, shard: int, batch: int) -> str:
    """Raw payload of a fetched batch, as read from the source."""
    return _batch_path(run_id, "raw", shard, batch)


def staged_key(run_id: str, shard: int, batch: int) -> str:
    """Cleaned batch, waiting to be loaded."""
    return _batch_path(run_id, "staged", shard, batch)


def quarantine_key(run_id: str, shard: int, batch: int) -> str:
    """Rows of a batch that failed cleaning, each with its reason."""
    return _batch_path(run_id, "quarantine", shard, batch)


# Queues: Dramatiq's names for a queue's delay queue and dead-letter queue (both brokers).

DELAY_SUFFIX = ".DQ"
DEAD_LETTER_SUFFIX = ".XQ"


def delay_queue(queue: str) -> str:
    """Where Dramatiq keeps the delayed (eta, retry back-off) messages of `queue`."""
    return f"{queue}{DELAY_SUFFIX}"


def dead_letter_queue(queue: str) -> str:
    """Where Dramatiq keeps the dead letters of `queue`."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"


def queue_of_delayed(queue: str) -> str:
    """The queue a delayed message goes back to (`queue` itself when not a delay queue)."""
    return queue.removesuffix(DELAY_SUFFIX)
