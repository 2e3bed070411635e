"""Durable names: every name the toolkit writes somewhere that outlives a process (object
keys, lease keys, dedup fingerprints, run ids, part files, actor and queue names). They are
deterministic, so the same work always gets the same name (writing a batch again after a
crash replaces its object instead of adding a second copy), and they must not change
between versions: data and messages written by one are read by the next.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol


class _Window(Protocol):
    """What a backfill run id is made of (etl.sources.windows.Window)."""

    start: str
    end: str

    def to_dict(self) -> dict[str, str]: ...


# Object keys: where a batch's objects live in the object store.


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


# Actors and message options.

#: Prefix of the ETL actors' names (`etl_fetch`, `etl_clean`, `etl_load`): result records
#: and dead letters name them.
ACTOR_PREFIX = "etl_"

#: Message option set on a message deferred because its task was leased elsewhere.
DEFERRED_OPTION = "etl_deferred"


def actor_name(stage: str) -> str:
    """The actor of a stage: `etl_fetch`, `etl_clean`, `etl_load`."""
    return f"{ACTOR_PREFIX}{stage}"


def stage_of_actor(name: str) -> str | None:
    """The stage of an ETL actor's name; None for another actor."""
    return name.removeprefix(ACTOR_PREFIX) if name.startswith(ACTOR_PREFIX) else None


# Leases (PendingTasks.task_key) and the dedup ledger (TaskDedup.task_fingerprint).

def fetch_key(run_id: str, shard: int) -> str:
    """The lease of a shard's fetch lane: one owner at a time walks its cursor."""
    return f"fetch:{run_id}:{shard}"


def step_key(stage: str, run_id: str, shard: int, batch: int) -> str:
    """The lease of one batch's clean or load."""
    return f"{stage}:{run_id}:{shard}:{batch}"


def task_key(stage: str, run_id: str, shard: int, batch: int) -> str:
    """The lease key of a message: the shard's fetch lane, or one batch's clean/load."""
    return fetch_key(run_id, shard) if stage == "fetch" else step_key(stage, run_id, shard, batch)


def task_fingerprint(stage: str, run_id: str, shard: int, batch: int) -> str:
    """The deterministic identity of one unit of work, the key of TaskDedup."""
    raw = f"{stage}\x1f{run_id}\x1f{shard}\x1f{batch}"
    return hashlib.sha256(raw.encode()).hexdigest()


# Run ids.

def replay_run_id(original: str, generation: int) -> str:
    """The run id of the `generation`-th replay of run `original`."""
    return f"{original}-replay{generation}"


def backfill_run_id(pipeline: str, plan: str, window: _Window) -> str:
    """Stable, readable, unique per (pipeline, plan, window)."""
    digest = hashlib.sha256("\x1f".join([pipeline, plan, *window.to_dict().values()]).encode())
    def compact(text: str) -> str:
        return re.sub(r"[^0-9A-Za-z]+", "", text)[:15]
    return f"{pipeline}-{compact(window.start)}-{compact(window.end)}-{digest.hexdigest()[:8]}"


# Part files of the Parquet sink: `part-<run>-<shard>-<batch>.parquet`.

#: Glob of the part files in a dataset directory.
PART_GLOB = "part-*.parquet"

#: A part file's name; the run id is everything between "part-" and the shard number.
PART_FILE = re.compile(r"^part-(?P<run>.+)-(?P<shard>\d{5,})-(?P<batch>\d{6,})\.parquet$")


def part_file_name(run_id: str, shard: int, batch: int) -> str:
    """The part file of one batch (the run id is not checked here)."""
    return f"part-{run_id}-{shard:05d}-{batch:06d}.parquet"
