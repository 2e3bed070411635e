"""Range shards: equal-width ranges over a numeric or time column.

Bounds are learned once from the data (`fit`) and stored with the run. Every row lands in
exactly one shard: values below the first edge go to shard 0, above the last edge to the
last shard, and nulls to shard 0, so rows that arrive later outside the fitted range are
never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


def _is_time(values: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(values) or (
        (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values))
        and not values.dropna().empty)


def _as_numbers(values: pd.Series, *, time: bool) -> np.ndarray:
    """float64 view of the column (time: nanoseconds since the epoch, UTC); NaN for null."""
    if time:
        stamps = pd.to_datetime(values, utc=True, errors="coerce")
        out = stamps.astype("int64").astype("float64").to_numpy(copy=True)
        out[stamps.isna().to_numpy()] = np.nan
        return out
    return pd.to_numeric(values, errors="coerce").astype("float64").to_numpy(na_value=np.nan, copy=True)


@dataclass(frozen=True)
class RangeShards:
    """`shards` equal-width ranges of `column`; `bounds` holds the N+1 edges once fitted."""

    column: str
    shards: int
    bounds: tuple[float, ...] | None = None
    time: bool = False
    columns: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        object.__setattr__(self, "columns", [self.column])

    def describe(self) -> str:
        return f"range({self.column})/{self.shards}"

    def fit(self, frame: pd.DataFrame) -> "RangeShards":
        values = frame[self.column]
        time = _is_time(values)
        numbers = _as_numbers(values, time=time)
        finite = numbers[np.isfinite(numbers)]
        low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
        edges = tuple(float(x) for x in np.linspace(low, high, self.shards + 1))
        return RangeShards(self.column, self.shards, bounds=edges, time=time)

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        if self.bounds is None:
            raise ValueError(f"{self.describe()} is not fitted: call fit() on the source first")
        numbers = _as_numbers(frame[self.column], time=self.time)
        inner = np.asarray(self.bounds[1:-1], dtype="float64")
        shard = np.searchsorted(inner, numbers, side="right").astype(np.int64)
        shard[np.isnan(numbers)] = 0
        return np.clip(shard, 0, self.shards - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "range", "column": self.column, "shards": self.shards,
                "bounds": list(self.bounds) if self.bounds is not None else None,
                "time": self.time}
