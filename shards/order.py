"""Rows grouped by shard: the order a source reads a shard plan's rows in.

A source that holds all its rows (a file) assigns each row its shard once, then reads shard
s as one contiguous run of row ordinals, in file order. Shard numbers are small, so they are
sorted as 16-bit integers, for which numpy's stable sort is a radix sort: ~10x faster than
sorting them as int64, with the same result (a stable sort has one answer).
"""

from __future__ import annotations

import numpy as np

#: Plans with at most this many shards sort their shard numbers as uint16.
_RADIX_SHARDS = 1 << 16


def rows_by_shard(assigned: np.ndarray, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the row ordinals sorted by shard, file order within a shard, and
    where each shard's run begins in `order` (shards + 1 entries, the last = row count).
    `assigned` holds each row's shard, 0..shards-1."""
    assigned = np.asarray(assigned, dtype=np.int64)
    keys = assigned.astype(np.uint16) if shards <= _RADIX_SHARDS else assigned
    order = np.argsort(keys, kind="stable")
    starts = np.searchsorted(assigned[order], np.arange(shards + 1), side="left")
    return order, starts


__all__ = ["rows_by_shard"]
