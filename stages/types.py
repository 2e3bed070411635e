"""Cast stages and the conversions they share. A value that cannot be converted rejects its
row with the column, the value and the target type; it never becomes a silent null, never
wraps around (300 is not an Int8) and never crashes the batch. The timestamp stages live in
stages.timestamps."""

from __future__ import annotations

from typing import Any, Mapping

from etl.core.lazy import LazyModule
from stages.errors import StageError
from stages._util import require_columns, split
from stages.base import BaseStage, StageResult

pd = LazyModule("pandas")
pdt = LazyModule("pandas.api.types")
np = LazyModule("numpy")

_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_EXACT = 2.0**53  # floats at or beyond this cannot hold every integer: parse the text exactly


def _numbers(values: pd.Series) -> pd.Series:
    """Numeric view of a column: numbers as they are, text parsed (NaN where it is not one)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("Int8")
    if pd.api.types.is_numeric_dtype(values):
        return values
    return pd.to_numeric(values, errors="coerce")


def _to_integer(values: pd.Series, dtype: Any) -> pd.Series:
    """`values` as a nullable integer dtype, NA where a value is not a whole number in range."""
    target = np.dtype(getattr(dtype, "numpy_dtype", dtype))
    info = np.iinfo(target)
    numbers = _numbers(values)
    if pd.api.types.is_integer_dtype(numbers):
        ints = numbers.to_numpy(dtype=np.dtype(getattr(numbers.dtype, "numpy_dtype", numbers.dtype)),
                                na_value=0)
        ok = (ints >= info.min) & (ints <= info.max) & ~_nulls(numbers)
        out = np.where(ok, ints, 0).astype(target)
    else:
        floats = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            ok = (np.floor(floats) == floats) & (floats >= info.min) & (floats < info.max + 1)
        out = np.where(ok, floats, 0).astype(target)
        if not pd.api.types.is_numeric_dtype(values):  # text: long integers parsed exactly
            for row in np.flatnonzero(ok & (np.abs(floats) >= _EXACT)):
                try:
                    exact = int(str(values.iloc[row]).strip())
                except ValueError:
                    continue  # "1e20": a float written as text, converted above
                ok[row] = info.min <= exact <= info.max
                out[row] = exact if ok[row] else 0
    return pd.Series(pd.arrays.IntegerArray(out, ~ok), index=values.index)


def _to_boolean(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("Float64")
        return (numbers == 1).astype("boolean").mask(~numbers.isin([0, 1]))
    text = values.astype("string").str.strip().str.lower()
    return text.isin(_TRUE).astype("boolean").mask(~text.isin(_TRUE + _FALSE))


def _to_times(values: pd.Series, dtype: pd.DatetimeTZDtype | np.dtype) -> pd.Series:
    """Times in `dtype`'s zone and unit. Text must be ISO 8601 (no offset = UTC). Numbers are
    not times here (their unit would be a guess): ParseTimestamp(unit=...) reads them."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    else:
        text = values.astype("string")
        if pd.api.types.is_numeric_dtype(values):
            text = pd.Series(pd.NA, index=values.index, dtype="string")  # numbers are rejected
        stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    stamps = to_unit(stamps, np.datetime_data(dtype.base if hasattr(dtype, "base") else dtype)[0])
    tz = getattr(dtype, "tz", None)
    return stamps.dt.tz_convert(tz) if tz is not None else stamps.dt.tz_localize(None)


def to_unit(stamps: pd.Series, unit: str) -> pd.Series:
    """`stamps` in time unit `unit`; times the unit cannot hold (after 2262 in ns) become NaT."""
    if _NS_PER[unit] < _NS_PER[stamps.dt.unit]:
        limit = np.iinfo(np.int64).max // (_NS_PER[stamps.dt.unit] // _NS_PER[unit])
        ticks = stamps.array.asi8
        stamps = stamps.mask((ticks > limit) | (ticks < -limit))
    return stamps.dt.as_unit(unit)


def convert(values: pd.Series, dtype: Any, column: str = "") -> pd.Series:
    """`values` as `dtype` (a pandas dtype), with NA where a present value cannot be converted.
    Integer targets become their nullable form ("int64" -> "Int64"): a batch may hold nulls."""
    if pd.api.types.is_integer_dtype(dtype):
        return _to_integer(values, dtype)
    if pd.api.types.is_bool_dtype(dtype):
        return _to_boolean(values)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return _to_times(values, dtype)
    if pd.api.types.is_float_dtype(dtype):
        with np.errstate(over="ignore"):  # too big for float32: inf, rejected by Cast
            return _numbers(values).astype(dtype)
    try:
        return values.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise StageError(f"Cast: cannot cast column {column!r} to {dtype}: {exc}") from exc


def _nulls(values: pd.Series) -> np.ndarray:
    """Where `values` is null, as a numpy mask: the array's own test, without the Series
    that Series.isna() builds (a cast checks every column of every batch)."""
    return np.asarray(values.array.isna(), dtype=bool)


def failed(original: pd.Series, result: pd.Series, dtype: Any) -> np.ndarray:
    """Rows where `convert` lost a present value: it became null, or (float targets) a finite
    number became infinite (1e300 as float32)."""
    bad = ~_nulls(original) & _nulls(result)
    if pd.api.types.is_float_dtype(dtype):
        before = _numbers(original).to_numpy(dtype=np.float64, na_value=np.nan)
        after = result.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = bad | (np.isfinite(before) & ~np.isfinite(after))
    return np.asarray(bad, dtype=bool)


#: dtype names pandas takes as spelled here: a Cast of these alone is built without
#: importing pandas (its dtypes are made on first use), so that `etl run` can begin parsing
#: a source before pandas is imported. Any other name is checked by pandas when the stage
#: is built, as before.
KNOWN_DTYPES = frozenset({
    "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32",
    "Float64", "boolean", "string", "str", "object", "category", "bool",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
    "float64", *(f"datetime64[{unit}{zone}]" for unit in ("s", "ms", "us", "ns")
                 for zone in ("", ", UTC")),
})


class Cast(BaseStage):
    """Cast columns to pandas dtypes ("Int64", "float64", "string", "boolean",
    "datetime64[ns, UTC]", ...); rows with unconvertible values are rejected."""

    name = "cast"

    def __init__(self, schema: Mapping[str, str]) -> None:
        self.schema = dict(schema)
        self._resolved: dict[str, Any] | None = None
        if not all(isinstance(d, str) and d in KNOWN_DTYPES for d in self.schema.values()):
            self._resolve()  # a name pandas must judge is judged now, when the stage is built

    @property
    def _dtypes(self) -> dict[str, Any]:
        return self._resolved if self._resolved is not None else self._resolve()

    def _resolve(self) -> dict[str, Any]:
        try:
            self._resolved = {column: pdt.pandas_dtype(dtype) for column, dtype in self.schema.items()}
        except TypeError as exc:
            raise StageError(f"{self!r}: {exc}") from exc
        return self._resolved

    def __repr__(self) -> str:
        return f"Cast({self.schema!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.schema)
        converted: dict[str, pd.Series] = {}
        bad = np.zeros(len(frame), dtype=bool)
        reasons = np.full(len(frame), None, dtype=object)
        for column, dtype in self._dtypes.items():
            original = frame[column]
            result = convert(original, dtype, column)
            new = failed(original, result, dtype) & ~bad  # the reason names the first failure
            if new.any():
                bad |= new
                shown = original[new].astype("string").to_numpy(dtype=object)
                reasons[new] = [f"cast: column '{column}' value '{value}' is not "
                                f"{self.schema[column]}" for value in shown]
            converted[column] = result
        return split(frame.assign(**converted), bad, reasons, original=frame, stage=self)
