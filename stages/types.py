"""Type stages: casts and timestamps. A value that cannot be converted rejects its row with
the column, the value and the target type; it never becomes a silent null."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from etl.errors import StageError
from stages._util import require_columns, split
from stages.base import StageResult

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _convert(values: pd.Series, dtype: str) -> pd.Series:
    """`values` as `dtype`, with NA where a present value cannot be converted."""
    lowered = dtype.lower()
    if lowered == "int64" and pd.api.types.is_float_dtype(values):
        return _floats_to_int64(values)
    if lowered in ("int64", "int32", "int16", "int8", "uint64", "uint32"):
        numbers = values if pd.api.types.is_numeric_dtype(values) else \
            pd.to_numeric(values, errors="coerce")
        if pd.api.types.is_integer_dtype(numbers):
            return numbers.astype(dtype if dtype[0] in "IU" else dtype.capitalize())
        with np.errstate(invalid="ignore"):
            whole = numbers.isna() | ((numbers == np.floor(numbers)) & (numbers.abs() < 2.0**63))
        return numbers.where(whole).astype(dtype if dtype[0] in "IU" else dtype.capitalize())
    if lowered in ("float64", "float32"):
        numbers = values if pd.api.types.is_numeric_dtype(values) else \
            pd.to_numeric(values, errors="coerce")
        return numbers.astype(dtype)
    if lowered in ("string", "str"):
        return values.astype("string")
    if lowered in ("boolean", "bool"):
        text = values.astype("string").str.strip().str.lower()
        return text.map(lambda v: True if v in _TRUE else False if v in _FALSE else pd.NA,
                        na_action="ignore").astype("boolean")
    if lowered.startswith("datetime64"):
        stamps = pd.to_datetime(values, errors="coerce", utc=True)
        return stamps if "utc" in lowered else stamps.dt.tz_localize(None)
    try:
        return values.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise StageError(f"Cast: cannot cast to {dtype!r}: {exc}") from exc


def _floats_to_int64(values: pd.Series) -> pd.Series:
    """Fast path for the common case (a float column with NaN for missing) to Int64."""
    floats = values.to_numpy(dtype="float64", na_value=np.nan)
    missing = np.isnan(floats)
    with np.errstate(invalid="ignore"):
        whole = (floats == np.floor(floats)) & (np.abs(floats) < 2.0**63)
    ints = np.where(whole, floats, 0).astype(np.int64)
    return pd.Series(pd.arrays.IntegerArray(ints, missing | ~whole), index=values.index)


class Cast:
    """Cast columns to pandas dtypes ("Int64", "float64", "string", "boolean",
    "datetime64[ns, UTC]", ...); rows with unconvertible values are rejected."""

    name = "cast"

    def __init__(self, schema: Mapping[str, str]) -> None:
        self.schema = dict(schema)

    def __repr__(self) -> str:
        return f"Cast({self.schema!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.schema)
        converted: dict[str, pd.Series] = {}
        reasons = pd.Series(pd.NA, index=frame.index, dtype="string")
        for column, dtype in self.schema.items():
            original = frame[column]
            result = _convert(original, dtype)
            failed = original.notna() & result.isna()
            if failed.any():
                text = ("cast: column '" + column + "' value '" + original[failed].astype("string")
                        + f"' is not {dtype}")
                reasons = reasons.fillna(text.reindex(frame.index))
            converted[column] = result
        out = frame.assign(**converted)
        bad = reasons.notna()
        return split(out, bad, reasons) if bad.any() else StageResult(kept=out)


class DeriveTimestamp:
    """Build a timestamp column from date parts and an HHMM integer (517 -> 05:17; 2400 ->
    midnight ending the day), read in `tz` local time and stored as UTC. Rows with invalid
    parts, or a local time that does not exist or is ambiguous at a DST change, are rejected."""

    name = "derive_timestamp"

    def __init__(self, *, target: str, year: str, month: str, day: str, hhmm: str,
                 tz: str = "UTC") -> None:
        self.target, self.year, self.month, self.day, self.hhmm, self.tz = \
            target, year, month, day, hhmm, tz

    def __repr__(self) -> str:
        return (f"DeriveTimestamp(target={self.target!r}, year={self.year!r}, "
                f"month={self.month!r}, day={self.day!r}, hhmm={self.hhmm!r}, tz={self.tz!r})")

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.year, self.month, self.day, self.hhmm])
        year, month, day, hhmm = (pd.to_numeric(frame[c], errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan) for c in (self.year, self.month, self.day, self.hhmm))
        valid = (np.isfinite(year) & np.isfinite(month) & np.isfinite(day) & np.isfinite(hhmm)
                 & (month >= 1) & (month <= 12) & (day >= 1) & (hhmm >= 0) & (hhmm <= 2400)
                 & (hhmm % 100 < 60) & (year >= 1678) & (year <= 2261))
        y, m, d, t = (np.where(valid, a, 1).astype("int64") for a in (year, month, day, hhmm))
        months = ((np.where(valid, y, 1970) - 1970) * 12 + (m - 1)).astype("datetime64[M]")
        first = months.astype("datetime64[D]")
        days_in_month = ((months + 1).astype("datetime64[D]") - first).astype("int64")
        valid &= d <= days_in_month
        minutes = (t // 100) * 60 + t % 100
        local_ns = (first + (d - 1)).astype("datetime64[ns]") + minutes.astype("timedelta64[m]")
        local = pd.Series(np.where(valid, local_ns, np.datetime64("NaT")), index=frame.index)
        try:
            stamps = local.dt.tz_localize(self.tz, ambiguous="NaT", nonexistent="NaT")
        except Exception as exc:  # noqa: BLE001 - an unknown time zone name
            raise StageError(f"{self!r}: {exc}") from exc
        stamps = stamps.dt.tz_convert("UTC")
        out = frame.assign(**{self.target: stamps})
        bad = stamps.isna()
        if not bad.any():
            return StageResult(kept=out)
        reason = pd.Series(f"derive_timestamp: no valid {self.tz} time from "
                           f"{self.year}/{self.month}/{self.day} {self.hhmm}",
                           index=frame.index, dtype="string")
        return split(out, bad, reason)
