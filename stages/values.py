"""Value stages: fill nulls with defaults, and map codes to values. FillNulls never rejects a
row; MapValues rejects the rows whose value is not in its mapping when told to."""

from __future__ import annotations

import warnings
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import call_repr, is_null, require_columns, shown, split
from stages.base import BaseStage, StageResult

_UNMAPPED = ("keep", "null", "reject")
_MISSING = object()


def _fill(column: str, values: pd.Series, value: Any) -> pd.Series:
    """`values` with its nulls replaced by `value`, in the column's own dtype."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pandas warns, then upcasts, on a misfit value
            filled = values.fillna(value)
        if filled.dtype == values.dtype or values.dtype == object:
            return filled
    except (TypeError, ValueError, Warning):
        pass
    if values.isna().all():  # an all-null column has no type of its own (a CSV batch of nulls)
        return pd.Series([value] * len(values), index=values.index).infer_objects()
    raise StageError(f"FillNulls: value {value!r} does not fit column {column!r} of dtype "
                     f"{values.dtype}; cast the column first")


@dataclass(frozen=True, repr=False)
class FillNulls(BaseStage):
    """Replace nulls per column: FillNulls({"country": "unknown", "qty": 0}). A value that does
    not fit the column's dtype (text into an integer column) is a configuration error, not a
    silent change of the column's type."""

    values: Mapping[str, Any]
    name: ClassVar[str] = "fill_nulls"
    _positional: ClassVar[tuple[str, ...]] = ("values",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", dict(self.values))
        for column, value in self.values.items():
            if not pd.api.types.is_scalar(value) or is_null(value):
                raise StageError(f"{self!r}: the value for column {column!r} must be a "
                                 f"non-null scalar, not {value!r}")

    __repr__ = call_repr

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.values)
        filled = {c: _fill(c, frame[c], v) for c, v in self.values.items() if frame[c].isna().any()}
        return StageResult(kept=frame.assign(**filled) if filled else frame)


def _dtype_of(values: list[Any]) -> str | None:
    """The nullable dtype that holds every one of `values`, or None (object)."""
    kinds = {type(v) for v in values if not is_null(v)}
    if kinds and kinds <= {str}:
        return "string"
    if kinds and kinds <= {bool, np.bool_}:
        return "boolean"
    numbers = {int, np.int64, np.int32, float, np.float64}
    if kinds and kinds <= numbers:
        return "Int64" if not kinds & {float, np.float64} else "Float64"
    return None


@dataclass(frozen=True, repr=False)
class MapValues(BaseStage):
    """Replace the values of `column` through `mapping` (codes to labels, spellings to one
    spelling), into `target` (default: the column itself). `unmapped` says what happens to a
    value not in the mapping: "keep" it as it is, make it "null", or "reject" its row. Nulls
    stay null and are never rejected. Lookup is Python's: 1, 1.0 and True are the same key."""

    column: str
    mapping: Mapping[Any, Any]
    _: KW_ONLY
    unmapped: Literal["keep", "null", "reject"] = "keep"
    target: str | None = None
    name: ClassVar[str] = "map_values"
    _positional: ClassVar[tuple[str, ...]] = ("column", "mapping")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", dict(self.mapping))
        if self.unmapped not in _UNMAPPED:
            raise StageError(f"MapValues: unmapped must be one of {', '.join(_UNMAPPED)}, "
                             f"not {self.unmapped!r}")

    __repr__ = call_repr

    def _dtype(self, values: pd.Series) -> Any:
        """Result dtype, from the configuration and the column's dtype (never the batch's
        values, so every batch of a run gets the same dtype)."""
        if self.unmapped != "keep":
            return _dtype_of(list(self.mapping.values()))
        targets = list(self.mapping.values())
        if values.dtype != object:
            try:  # the column's dtype, if it holds every mapped value as it is ("1" is not 1)
                if pd.array(targets, dtype=values.dtype).tolist() == targets:
                    return values.dtype
            except (TypeError, ValueError):
                pass
        return None

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.column])
        values = frame[self.column]
        out = np.empty(len(values), dtype=object)
        unmapped = np.zeros(len(values), dtype=bool)
        for i, value in enumerate(values.array):
            try:
                found = _MISSING if is_null(value) else self.mapping.get(value, _MISSING)
            except TypeError:  # an unhashable cell (a list): not a key of any mapping
                found = _MISSING
            if found is _MISSING:
                unmapped[i] = not is_null(value)
                out[i] = None if (unmapped[i] and self.unmapped != "keep") or is_null(value) \
                    else value
            else:
                out[i] = found
        dtype = self._dtype(values)
        mapped = pd.Series(pd.array(out, dtype=dtype) if dtype is not None else out,
                           index=frame.index, name=self.target or self.column)
        kept = frame.assign(**{self.target or self.column: mapped})
        if self.unmapped != "reject" or not unmapped.any():
            return StageResult(kept=kept)
        reasons = np.full(len(values), None, dtype=object)
        reasons[unmapped] = [f"map_values: column '{self.column}' value '{shown(v)}' is not in "
                             f"the mapping" for v in values[unmapped]]
        return split(kept, unmapped, reasons, original=frame, stage=self)
