"""Date stages: text into calendar dates with an explicit format, and explicit time zone
conversion of timestamp columns. Nothing depends on the machine's zone or the date today."""

from __future__ import annotations

import locale
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import as_list, call_repr, require_columns, shown, split
from stages.base import BaseStage, StageResult
from stages.timestamps import check_zone

#: strptime codes whose meaning comes from the LC_TIME locale (month and day names, AM/PM).
_NAMED = ("%a", "%A", "%b", "%B", "%p", "%c", "%x", "%X")
DATE_DTYPE = "date32[pyarrow]"


def _check_names(stage: object, fmt: str) -> None:
    """Month and day names are read in the C locale (English); refuse to read them under
    another LC_TIME, where "Mär" or "mars" would parse on one machine and not on the next."""
    current = locale.setlocale(locale.LC_TIME)
    if any(code in fmt for code in _NAMED) and current not in ("C", "POSIX"):
        raise StageError(f"{stage!r}: format {fmt!r} uses month/day names, which depend on the "
                         f"locale (LC_TIME is {current!r}); use numeric codes or the C locale")


@dataclass(frozen=True, repr=False)
class ParseDate(BaseStage):
    """Parse `column` into calendar dates (dtype date32[pyarrow]: a Parquet DATE, a date in
    MongoDB) written to `target` (default: the column itself). `format` uses strptime codes
    and must match the whole value ("%d/%m/%Y"; default ISO "%Y-%m-%d"). Values carrying an
    offset (format with %z), and timestamp columns with a zone, are converted to `tz` before
    the date is taken: 23:30 in New York is already tomorrow in UTC. Unparseable values and
    dates that do not exist (2013-02-29) reject their row."""

    column: str
    _: KW_ONLY
    format: str = "%Y-%m-%d"
    tz: str = "UTC"
    target: str | None = None
    name: ClassVar[str] = "parse_date"
    _positional: ClassVar[tuple[str, ...]] = ("column",)

    def __post_init__(self) -> None:
        check_zone(self, self.tz)
        if "%" not in self.format:
            raise StageError(f"{self!r}: format needs strptime codes such as %Y-%m-%d")

    __repr__ = call_repr

    def _stamps(self, values: pd.Series) -> pd.Series:
        """Naive midnight-or-later times whose date is the answer; NaT where unreadable."""
        if pd.api.types.is_datetime64_any_dtype(values):
            aware = getattr(values.dt, "tz", None) is not None
            return values.dt.tz_convert(self.tz).dt.tz_localize(None) if aware else values
        _check_names(self, self.format)
        text = values.astype("string").str.strip()
        zoned = "%z" in self.format or "%Z" in self.format
        try:
            stamps = pd.to_datetime(text, format=self.format, errors="coerce", utc=zoned)
        except (ValueError, TypeError) as exc:  # a bad format string
            raise StageError(f"{self!r}: {exc}") from exc
        return stamps.dt.tz_convert(self.tz).dt.tz_localize(None) if zoned else stamps

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.column])
        values = frame[self.column]
        stamps = self._stamps(values).set_axis(frame.index)
        dates = stamps.dt.floor("D").astype(DATE_DTYPE)
        kept = frame.assign(**{self.target or self.column: dates})
        bad = values.notna().to_numpy() & stamps.isna().to_numpy()
        if not bad.any():
            return StageResult(kept=kept)
        reasons = np.full(len(frame), None, dtype=object)
        reasons[bad] = [f"parse_date: column '{self.column}' value '{shown(v)}' is not a date "
                        f"({self.format})" for v in values[bad]]
        return split(kept, bad, reasons, original=frame, stage=self)


@dataclass(frozen=True, repr=False)
class ConvertTimezone(BaseStage):
    """Show time zone aware timestamp columns in zone `tz` ("UTC" for storage, a local zone
    for reports). The instants do not change, only the wall clock they are shown in. A
    column without a zone is a configuration error: ParseTimestamp(tz=...) says what zone
    its wall times are in."""

    columns: str | Sequence[str]
    _: KW_ONLY
    tz: str
    name: ClassVar[str] = "convert_timezone"

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(as_list(self.columns)))
        check_zone(self, self.tz)

    __repr__ = call_repr

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.columns)
        converted: dict[str, pd.Series] = {}
        for column in self.columns:
            values = frame[column]
            if not pd.api.types.is_datetime64_any_dtype(values) or values.dt.tz is None:
                raise StageError(f"{self!r}: column {column!r} is {values.dtype}, not a time "
                                 f"zone aware timestamp; parse it with ParseTimestamp first")
            converted[column] = values.dt.tz_convert(self.tz)
        return StageResult(kept=frame.assign(**converted))
