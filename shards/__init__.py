"""Shard plans: range (numeric or time key) and hash (stable hash of the key % N)."""

from __future__ import annotations

from typing import Any

from shards.base import ShardPlan
from shards.hashing import HashShards, stable_hash
from shards.order import assign_rows, rows_by_shard, shard_of_rows
from shards.range import RangeShards


def plan_from_dict(data: dict[str, Any]) -> ShardPlan:
    """Rebuild a fitted plan from `plan.to_dict()` (as stored with a run)."""
    kind = data.get("kind")
    if kind == "hash":
        return HashShards(data["columns"], int(data["shards"]))
    if kind == "range":
        bounds = data.get("bounds")
        return RangeShards(data["column"], int(data["shards"]),
                           bounds=tuple(bounds) if bounds is not None else None,
                           time=bool(data.get("time", False)))
    raise ValueError(f"unknown shard plan kind {kind!r}; known: hash, range")


__all__ = ["HashShards", "RangeShards", "ShardPlan", "assign_rows", "plan_from_dict",
           "rows_by_shard", "shard_of_rows", "stable_hash"]
