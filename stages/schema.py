"""CastSchema: a whole table schema, column -> dtype, applied in one stage. Every batch comes
out with exactly the declared dtypes (so the Parquet files of a run share one schema); a
value that does not fit its column rejects the row with the column and the value."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import pandas_dtype

from stages.errors import StageError
from stages._util import call_repr, require_columns, shown, split
from stages.base import BaseStage, StageResult
from stages.types import convert, failed

_EXTRA = ("keep", "drop", "error")
_ARROW = "integers, floats, bool, string, timestamp[unit, tz] and date32"


def _twin(dtype: Any) -> Any:
    """The pandas dtype `convert` produces on the way to `dtype` ("date" for a date32);
    None for an Arrow type this stage does not handle."""
    if not isinstance(dtype, pd.ArrowDtype):
        return dtype
    kind = dtype.pyarrow_dtype
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return np.dtype(kind.to_pandas_dtype())
    if pa.types.is_boolean(kind):
        return pd.BooleanDtype()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pd.StringDtype()
    if pa.types.is_timestamp(kind):
        unit = kind.unit
        return pd.DatetimeTZDtype(unit, kind.tz) if kind.tz else np.dtype(f"datetime64[{unit}]")
    if pa.types.is_date32(kind):
        return "date"
    return None


def _holds_nulls(dtype: Any) -> bool:
    """False for NumPy integer and bool dtypes: a null cannot be stored in them."""
    return not (isinstance(dtype, np.dtype) and dtype.kind in "iub")


def cast_column(values: pd.Series, dtype: Any, column: str) -> tuple[pd.Series, np.ndarray]:
    """`values` converted towards `dtype` and the rows whose value does not fit it (lost in
    the conversion, or null where `dtype` holds no nulls)."""
    twin = _twin(dtype)
    if twin == "date":
        stamps = convert(values, np.dtype("datetime64[s]"), column)
        odd = stamps.notna() & ((stamps != stamps.dt.floor("D"))  # a time of day is not a date
                                | ~stamps.dt.year.between(1, 9999))  # nor is year -1
        lost = failed(values, stamps, stamps.dtype) | odd.to_numpy()
        return stamps.mask(lost).astype(dtype), lost
    result = convert(values, twin, column)
    lost = failed(values, result, twin)
    if not _holds_nulls(dtype):
        lost = lost | result.isna().to_numpy()
    return (result.astype(dtype) if _holds_nulls(dtype) else result), lost


@dataclass(frozen=True, repr=False)
class CastSchema(BaseStage):
    """Cast every column of `schema` to its dtype: pandas nullable dtypes ("Int64", "Float64",
    "boolean", "string"), NumPy ones ("int64", "float64", "bool": these hold no nulls, so a
    null rejects its row), times ("datetime64[ns, UTC]") and pyarrow ones ("int64[pyarrow]",
    "string[pyarrow]", "timestamp[us, tz=UTC][pyarrow]", "date32[pyarrow]"). Nothing is
    coerced: 2.5 is not an Int64, 300 is not an int8, "2013-01-01 10:00" is not a date.
    Columns outside the schema are kept, dropped, or an error, as `extra` says."""

    schema: Mapping[str, str]
    _: KW_ONLY
    extra: Literal["keep", "drop", "error"] = "keep"
    name: ClassVar[str] = "cast_schema"
    _positional: ClassVar[tuple[str, ...]] = ("schema",)
    _dtypes: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", dict(self.schema))
        if self.extra not in _EXTRA:
            raise StageError(f"{self!r}: extra must be one of {', '.join(_EXTRA)}")
        dtypes: dict[str, Any] = {}
        for column, spec in self.schema.items():
            try:
                dtypes[column] = pandas_dtype(spec)
            except (TypeError, ValueError, NotImplementedError) as exc:
                raise StageError(f"{self!r}: column {column!r}: unknown dtype {spec!r} "
                                 f"({exc})") from exc
            if _twin(dtypes[column]) is None:
                raise StageError(f"{self!r}: column {column!r}: {spec!r} is not supported; "
                                 f"pyarrow dtypes supported are {_ARROW}")
        object.__setattr__(self, "_dtypes", dtypes)

    __repr__ = call_repr

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.schema)
        extras = [c for c in frame.columns if c not in self.schema]
        if extras and self.extra == "error":
            raise StageError(f"{self!r}: column(s) not in the schema: "
                             f"{', '.join(map(repr, extras))}")
        converted: dict[str, pd.Series] = {}
        bad = np.zeros(len(frame), dtype=bool)
        reasons = np.full(len(frame), None, dtype=object)
        for column, dtype in self._dtypes.items():
            original = frame[column]
            converted[column], lost = cast_column(original, dtype, column)
            new = lost & ~bad  # a row's reason names the first column that does not fit
            if new.any():
                bad |= new
                reasons[new] = [f"cast_schema: column '{column}' value '{shown(v)}' does not fit "
                                f"{self.schema[column]}" for v in original[new]]
        out = frame.assign(**converted)
        if self.extra == "drop":
            out = out[[c for c in frame.columns if c in self.schema]]
        result = split(out, bad, reasons, original=frame, stage=self)
        exact = {c: d for c, d in self._dtypes.items() if not _holds_nulls(d)}
        return StageResult(kept=result.kept.astype(exact) if exact else result.kept,
                           rejected=result.rejected)
