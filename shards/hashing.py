"""Hash shards: stable hash(key) % N, the same on every machine, process and run.

Python's hash() is salted per process, so it cannot be used. Each key column is hashed by
its value, not its storage: integers (any width, nullable or not) and whole floats by their
64-bit integer value through the SplitMix64 finaliser; other floats by their IEEE-754 bits
(the same on every platform, and 100x faster than formatting them); times as UTC
nanoseconds; text (and anything else, as its str) as UTF-8 through SipHash-2-4 under a fixed
key (pandas.util.hash_array); null as a fixed marker. Object columns holding only numbers or
times hash like the typed column. Columns are then folded together. Everything is
vectorised: 336k keys hash in a few tens of milliseconds. A golden-value test pins the
function: changing it would move rows between the shards of existing runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etl.core.lazy import LazyModule

pd = LazyModule("pandas")
pdt = LazyModule("pandas.api.types")
pdu = LazyModule("pandas.util")
np = LazyModule("numpy")

HASH_KEY = "etl-shards-v1---"  # 16 bytes, fixed forever
#: The hash constants, as Python ints (made uint64 where used: numpy is imported on first
#: use, so that defining a pipeline imports no numpy).
NULL_HASH = 0x6E756C6C6E756C6C  # "nullnull"
FLOAT_TAG = 0x666C6F6174363421  # "float64!": fractional floats by their bits
_GOLDEN = 0x9E3779B97F4A7C15
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_SAMPLE = 4096  # rows looked at to choose how to hash a text column


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        # a new array: the rest works in place on it (3.4M keys: 90 -> 40 ms)
        x = x + np.uint64(_GOLDEN)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return x


def _hash_text(values: np.ndarray) -> np.ndarray:
    """SipHash-2-4 of the UTF-8 bytes of each string (C speed, no per-row Python)."""
    return pdu.hash_array(values.astype(object, copy=False), hash_key=HASH_KEY, categorize=False)


def _hash_strings(values: pd.Series) -> np.ndarray:
    """Each value's text hashed; a column with few distinct values (codes, airports) is
    hashed once per distinct value. Both ways give the same numbers: only speed differs."""
    head = values.iloc[:_SAMPLE]
    if len(head) == _SAMPLE and head.nunique(dropna=False) * 4 < _SAMPLE:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        hashed = _hash_text(pd.Index(uniques).astype("string").to_numpy(dtype=object))
        return hashed[codes] if len(hashed) else np.zeros(len(codes), dtype=np.uint64)
    return _hash_text(values.astype("string").to_numpy(dtype=object, na_value=""))


def _canonical(values: pd.Series) -> pd.Series:
    """Object columns holding only numbers, booleans or times typed as such, so that a key
    hashes by its value whether it arrives typed or as Python objects."""
    if values.dtype != object:
        return values
    kind = pdt.infer_dtype(values, skipna=True)
    try:
        if kind in ("integer", "boolean"):
            return values.astype("Int64")
        if kind in ("floating", "mixed-integer-float"):
            return values.astype("float64")
        if kind in ("datetime", "datetime64"):
            return pd.to_datetime(values, utc=True)
    except (TypeError, ValueError, OverflowError):
        pass  # e.g. integers beyond int64: hashed as text
    return values


def _hash_times(values: pd.Series) -> np.ndarray:
    """Times by their UTC nanoseconds (naive = UTC), whatever unit the column is stored in;
    the rare time outside the nanosecond range (after 2262) by its ISO text."""
    stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    per = _NS_PER[stamps.dt.unit]
    ticks = stamps.array.asi8
    limit = np.iinfo(np.int64).max // per
    inside = ((ticks >= -limit) & (ticks <= limit)) | stamps.isna().to_numpy()
    with np.errstate(over="ignore"):
        out = _mix((np.where(inside, ticks, 0) * np.int64(per)).view(np.uint64))
    if not inside.all():
        far = stamps[~inside].astype(str).to_numpy(dtype=object)
        out[~inside] = _hash_text(far)
    return out


def _hash_column(values: pd.Series) -> np.ndarray:
    """uint64 hash of each value of one key column (see the module docstring)."""
    values = _canonical(values)
    nulls = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        out = _mix(values.fillna(False).astype("int64").to_numpy().astype(np.uint64))
    elif pd.api.types.is_integer_dtype(values):
        out = _mix(values.fillna(0).astype("int64").to_numpy().view(np.uint64))
    elif pd.api.types.is_float_dtype(values):
        floats = values.astype("float64").to_numpy(na_value=np.nan)
        whole = np.isfinite(floats) & (np.floor(floats) == floats) & (np.abs(floats) < 2.0**63)
        ints = np.where(whole, floats, 0).astype(np.int64).view(np.uint64)
        bits = np.where(np.isnan(floats), 0.0, floats).view(np.uint64) ^ np.uint64(FLOAT_TAG)
        out = _mix(np.where(whole, ints, bits))
    elif pd.api.types.is_datetime64_any_dtype(values):
        out = _hash_times(values)
    else:
        out = _hash_strings(values)
    out = np.array(out, dtype=np.uint64, copy=True)
    out[nulls] = np.uint64(NULL_HASH)
    return out


def stable_hash(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """uint64 hash of each row's key, stable across machines, processes and dtype widths."""
    result = _hash_column(frame[columns[0]])
    for column in columns[1:]:
        with np.errstate(over="ignore"):
            result = _mix(result * np.uint64(_GOLDEN) + _hash_column(frame[column]))
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
