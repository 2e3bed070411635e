"""Hash shards: stable hash(key) % N, the same on every machine, process and run.

Python's hash() is salted per process, so it cannot be used. Each key column is hashed by
its value, not its storage: integers (any width, nullable or not) and whole floats by their
64-bit integer value through the SplitMix64 finaliser; other floats by their repr; times as
UTC nanoseconds; text (and anything else) as UTF-8 through SipHash-2-4 under a fixed key
(pandas.util.hash_array); null as a fixed marker. Columns are then folded together. A
golden-value test pins the function: changing it would move rows between the shards of
existing runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.util import hash_array

HASH_KEY = "etl-shards-v1---"  # 16 bytes, fixed forever
NULL_HASH = np.uint64(0x6E756C6C6E756C6C)  # "nullnull"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash_text(values: np.ndarray) -> np.ndarray:
    return hash_array(values.astype(object), hash_key=HASH_KEY, categorize=True)


def _hash_column(values: pd.Series) -> np.ndarray:
    """uint64 hash of each value of one key column (see the module docstring)."""
    nulls = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        out = _mix(values.fillna(False).astype("int64").to_numpy().astype(np.uint64))
    elif pd.api.types.is_integer_dtype(values):
        out = _mix(values.fillna(0).astype("int64").to_numpy().view(np.uint64))
    elif pd.api.types.is_float_dtype(values):
        floats = values.astype("float64").to_numpy(na_value=np.nan)
        whole = np.isfinite(floats) & (np.floor(floats) == floats) & (np.abs(floats) < 2.0**63)
        out = np.empty(len(floats), dtype=np.uint64)
        out[whole] = _mix(floats[whole].astype(np.int64).view(np.uint64))
        other = ~whole & ~nulls
        if other.any():
            out[other] = _hash_text(np.array([repr(v) for v in floats[other].tolist()], dtype=object))
    elif pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        nanos = stamps.dt.as_unit("ns").astype("int64").to_numpy()
        out = _mix(nanos.view(np.uint64))
    else:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        hashed = _hash_text(pd.Index(uniques).astype("string").to_numpy(dtype=object))
        out = hashed[codes] if len(hashed) else np.zeros(len(codes), dtype=np.uint64)
    out = np.array(out, dtype=np.uint64, copy=True)
    out[nulls] = NULL_HASH
    return out


def stable_hash(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """uint64 hash of each row's key, stable across machines, processes and dtype widths."""
    result = _hash_column(frame[columns[0]])
    for column in columns[1:]:
        with np.errstate(over="ignore"):
            result = _mix(result * _GOLDEN + _hash_column(frame[column]))
    return result


@dataclass(frozen=True, init=False)
class HashShards:
    """Rows go to shard stable_hash(columns) % shards."""

    columns: list[str]
    shards: int

    def __init__(self, columns: str | list[str], shards: int) -> None:
        cols = [columns] if isinstance(columns, str) else list(columns)
        if not cols:
            raise ValueError("HashShards needs at least one key column")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "shards", shards)

    def describe(self) -> str:
        return f"hash({','.join(self.columns)})/{self.shards}"

    def fit(self, frame: pd.DataFrame) -> "HashShards":
        return self

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        return (stable_hash(frame, self.columns) % np.uint64(self.shards)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hash", "columns": list(self.columns), "shards": self.shards}
