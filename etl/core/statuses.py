"""Statuses of a run and of a shard's checkpoint, as stored and shown.

`enum.StrEnum`: each member is the very string stored in the state store and printed in
JSON, so data written before these enums existed reads back unchanged, and a member compares
equal to its string.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    """A run: working until every shard is loaded, then completed; failed when it gave up
    (it can be resumed); cancelled when told to stop (`etl cancel`: taken up again only
    when asked to, `etl run --resume`)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ShardStatus(enum.StrEnum):
    """A shard's checkpoint: pending until its first step, running once started, done once
    every batch is loaded; failed when a message of it was dead-lettered."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


__all__ = ["RunStatus", "ShardStatus"]
