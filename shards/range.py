"""Range shards: equal-width ranges over a numeric or time column.

Bounds are learned once from the data (`fit`) and stored with the run. Every row lands in
exactly one shard: values below the first edge go to shard 0, above the last edge to the
last shard, and nulls (and text that is not a time) to shard 0, so rows that arrive later
outside the fitted range are never lost.

Bounds are exact where the key is: integer keys get integer edges and times get integer
nanoseconds since the epoch (UTC), whatever unit the column happens to be stored in, so the
stored plan is JSON-able and splits the same way on every machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from etl.core.lazy import LazyModule

pd = LazyModule("pandas")
pdt = LazyModule("pandas.api.types")
np = LazyModule("numpy")

log = logging.getLogger(__name__)

_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_INTEGER_KINDS = {"integer", "boolean"}
_FLOAT_KINDS = {"floating", "mixed-integer-float", "decimal"}
_TIME_KINDS = {"string", "datetime", "datetime64", "date"}


def to_utc_times(values: pd.Series) -> pd.Series:
    """`values` as tz-aware UTC times: naive times are UTC, text is parsed as ISO 8601
    (offsets honoured, no offset = UTC); anything else becomes NaT. No guessing of other
    formats: a guess can depend on today's date, and shards must not."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")


def _kind(values: pd.Series) -> str:
    """"int", "float" or "time": how a column's values are compared."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return "time"
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_signed_integer_dtype(values):
        return "int"
    if pd.api.types.is_numeric_dtype(values):
        return "float"  # floats, and unsigned integers that may not fit int64
    inferred = pdt.infer_dtype(values, skipna=True)
    if inferred in _INTEGER_KINDS:
        return "int"
    if inferred in _FLOAT_KINDS or inferred == "empty":
        return "float"
    if inferred == "string":
        numbers = pd.to_numeric(values, errors="coerce")
        if (numbers.notna() == values.notna()).all():  # numbers written as text
            return "int" if pd.api.types.is_integer_dtype(numbers) else "float"
    if inferred in _TIME_KINDS:
        return "time"
    raise ValueError(f"range shards need a numeric or time column; {values.name!r} holds "
                     f"{inferred} values: use HashShards for it")


def _keys(values: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, null mask, nanoseconds per key unit): int64 keys for "int" and "time" (in the
    column's own time unit, which is exact), float64 for "float"."""
    if kind == "time":
        stamps = to_utc_times(values)
        nulls = stamps.isna().to_numpy()
        unit = _NS_PER[stamps.dt.unit]
        return stamps.array.asi8.copy(), nulls, unit
    numbers = values if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) \
        else pd.to_numeric(values, errors="coerce")
    nulls = numbers.isna().to_numpy()
    if kind == "int" and (pd.api.types.is_signed_integer_dtype(numbers)
                          or pd.api.types.is_bool_dtype(numbers)):
        return numbers.to_numpy(dtype=np.int64, na_value=0), nulls, 1
    floats = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return floats, nulls | np.isnan(floats), 1


@dataclass(frozen=True)
class RangeShards:
    """`shards` equal-width ranges of `column`; `bounds` holds the N+1 edges once fitted
    (ints for integer keys, floats for float keys, UTC nanoseconds when `time`)."""

    column: str
    shards: int
    bounds: tuple[float, ...] | tuple[int, ...] | None = None
    time: bool = False
    columns: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.bounds is not None and len(self.bounds) != self.shards + 1:
            raise ValueError(f"{self.describe()}: needs {self.shards + 1} bounds, "
                             f"got {len(self.bounds)}")
        object.__setattr__(self, "columns", [self.column])

    def describe(self) -> str:
        return f"range({self.column})/{self.shards}"

    def fit(self, frame: pd.DataFrame) -> "RangeShards":
        """Learn min and max of the column (nulls ignored) and split them into equal widths."""
        kind = _kind(frame[self.column])
        keys, nulls, unit = _keys(frame[self.column], kind)
        present = keys[~nulls & np.isfinite(keys)] if kind == "float" else keys[~nulls]
        unreadable = int(frame[self.column].notna().sum()) - int((~nulls).sum())
        if unreadable and not len(present) and kind == "time":
            raise ValueError(f"{self.describe()}: {self.column!r} is not a numeric or time "
                             "column (no value is a number or an ISO 8601 time); use HashShards")
        if unreadable:
            log.warning("%s: %d value(s) are not readable keys and go to shard 0",
                        self.describe(), unreadable)
        if kind == "float":
            low, high = (float(present.min()), float(present.max())) if len(present) else (0.0, 0.0)
            share = np.arange(self.shards + 1) / self.shards  # no high - low: it may overflow
            spread = np.maximum.accumulate(low * (1 - share) + high * share)
            edges: tuple[Any, ...] = (low, *(float(x) for x in spread[1:-1]), high)
        else:
            low, high = (int(present.min()) * unit, int(present.max()) * unit) if len(present) \
                else (0, 0)
            edges = tuple(low + (high - low) * i // self.shards for i in range(self.shards + 1))
        log.debug("fitted %s on %d keys: %s .. %s", self.describe(), len(present), low, high)
        return RangeShards(self.column, self.shards, bounds=edges, time=kind == "time")

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """Shard of every row: searchsorted over the inner edges; nulls go to shard 0."""
        if self.bounds is None:
            raise ValueError(f"{self.describe()} is not fitted: call fit() on the source first")
        integral = all(isinstance(b, int) for b in self.bounds)
        kind = "time" if self.time else "int" if integral else "float"
        keys, nulls, unit = _keys(frame[self.column], kind)
        inner = self.bounds[1:-1]
        if keys.dtype == np.int64:
            # edge e <= key * unit  <=>  ceil(e / unit) <= key: exact in the key's own unit
            edges = np.array([max(min(-(-e // unit), 2**63 - 1), -2**63) for e in inner],
                             dtype=np.int64)
        else:
            edges = np.array(inner, dtype=np.float64)
        shard = np.searchsorted(edges, keys, side="right").astype(np.int64)
        shard[nulls] = 0
        return shard

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "range", "column": self.column, "shards": self.shards,
                "bounds": list(self.bounds) if self.bounds is not None else None,
                "time": self.time}
