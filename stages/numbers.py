"""ParseNumber: text written with explicit decimal and thousands separators ("1.234,5" in a
German export, "1,234.5" in a US one) into numbers. Nothing is guessed from the data or the
machine's locale: a value that does not follow the configured layout rejects its row."""

from __future__ import annotations

import re
from dataclasses import KW_ONLY, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import call_repr, is_null, require_columns, shown, split
from stages.base import BaseStage, StageResult
from stages.types import convert, failed

_DTYPES = ("Float64", "Int64")
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, repr=False)
class ParseNumber(BaseStage):
    """Parse `column` into numbers ("Float64", or "Int64" for whole numbers) in `target`
    (default: the column itself). `decimal` and `thousands` are single characters; with
    `thousands` set, digit groups must be exactly three long ("1,5" is not 15 when the
    thousands separator is ","). An optional sign and exponent are allowed; surrounding
    whitespace is ignored (run NormalizeWhitespace first for non-breaking spaces). Values
    already numeric are converted as Cast would; unparseable values reject their row."""

    column: str
    _: KW_ONLY
    decimal: str = "."
    thousands: str | None = None
    dtype: Literal["Float64", "Int64"] = "Float64"
    target: str | None = None
    name: ClassVar[str] = "parse_number"
    _positional: ClassVar[tuple[str, ...]] = ("column",)
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for option in ("decimal", "thousands"):
            sep = getattr(self, option)
            if sep is not None and (len(sep) != 1 or sep in "0123456789+-eE"):
                raise StageError(f"{self!r}: {option} must be one character other than a "
                                 f"digit, a sign or an exponent, not {sep!r}")
        if self.thousands == self.decimal:
            raise StageError(f"{self!r}: decimal and thousands separators must differ")
        if self.dtype not in _DTYPES:
            raise StageError(f"{self!r}: dtype must be one of {', '.join(_DTYPES)}")
        dec = re.escape(self.decimal)
        whole = "[0-9]+" if self.thousands is None else \
            f"(?:[0-9]{{1,3}}(?:{re.escape(self.thousands)}[0-9]{{3}})+|[0-9]+)"
        pattern = f"[+-]?(?:{whole}(?:{dec}[0-9]*)?|{dec}[0-9]+)(?:[eE][+-]?[0-9]+)?"
        object.__setattr__(self, "_pattern", re.compile(pattern))

    __repr__ = call_repr

    def _number(self, value: Any) -> Decimal | None:
        """`value` as an exact Decimal, or None when it is not a number in this layout."""
        if isinstance(value, (bool, np.bool_)):
            return None
        if isinstance(value, (int, float, np.integer, np.floating, Decimal)):
            number = Decimal(value if not isinstance(value, np.generic) else value.item())
            return number if number.is_finite() else None
        text = str(value).strip()
        if not self._pattern.fullmatch(text):
            return None
        if self.thousands is not None:
            text = text.replace(self.thousands, "")
        try:
            return Decimal(text.replace(self.decimal, "."))
        except InvalidOperation:
            return None

    def _convert(self, number: Decimal | None) -> Any:
        """The number in the target dtype, or None when it does not fit."""
        if number is None:
            return None
        if self.dtype == "Int64":
            whole = number == number.to_integral_value()
            return int(number) if whole and _INT64[0] <= number <= _INT64[1] else None
        as_float = float(number)  # correctly rounded: the same on every machine
        return as_float if np.isfinite(as_float) else None

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.column])
        values = frame[self.column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            result = convert(values, pd.api.types.pandas_dtype(self.dtype), self.column)
            bad = failed(values, result, self.dtype)
        else:
            parsed = [None if is_null(v) else self._convert(self._number(v)) for v in values.array]
            result = pd.Series(pd.array(parsed, dtype=self.dtype), index=frame.index)
            bad = values.notna().to_numpy() & result.isna().to_numpy()
        kept = frame.assign(**{self.target or self.column: result})
        if not bad.any():
            return StageResult(kept=kept)
        layout = f"decimal {self.decimal!r}" + \
            ("" if self.thousands is None else f", thousands {self.thousands!r}")
        reasons = np.full(len(frame), None, dtype=object)
        reasons[bad] = [f"parse_number: column '{self.column}' value '{shown(v)}' does not parse "
                        f"as {self.dtype} ({layout})" for v in values[bad]]
        return split(kept, bad, reasons, original=frame, stage=self)
