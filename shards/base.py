"""Shard plans: how a source is split into N disjoint shards.

A plan maps every row to exactly one shard number in 0..N-1: no row in two shards, none left
out, whatever values the rows hold (out-of-range and null keys included). A plan that needs
to learn from the data (range bounds) is `fit` once when a run starts; the fitted plan is
stored with the run as a dict so that a resumed run, on any machine, splits the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from etl.core.lazy import LazyModule

pd = LazyModule("pandas")
np = LazyModule("numpy")


@runtime_checkable
class ShardPlan(Protocol):
    """A fitted or unfitted plan over `shards` shards."""

    shards: int

    def describe(self) -> str:
        """Stable text naming the plan, e.g. "hash(carrier,flight)/20". Runs are resumed only
        for the same pipeline and the same description."""

    def fit(self, frame: pd.DataFrame) -> "ShardPlan":
        """A plan ready to `assign`, with any bounds learned from `frame` (the whole source
        or a representative sample of its shard columns)."""

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """The shard number (int64, 0..shards-1) of every row of `frame`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form of the fitted plan; `shards.plan_from_dict` reverses it."""
