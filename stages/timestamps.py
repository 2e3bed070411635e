"""Timestamp stages: text, epoch numbers or date parts into time zone aware times. Wall-clock
text is read in an explicit zone (never the machine's), and a time that does not exist or
occurs twice at a DST change rejects its row unless told which instant to take."""

from __future__ import annotations

import zoneinfo
from typing import Any, Callable, Literal

from etl.core.lazy import LazyModule
from stages.errors import StageError
from stages._util import require_columns, split
from stages.base import BaseStage, StageResult
from stages.types import _numbers, to_unit

pd = LazyModule("pandas")
np = LazyModule("numpy")

Ambiguous = Literal["reject", "earliest", "latest"]
_ZONED = r"[Tt ]\d.*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"  # a time followed by Z or an offset


def check_zone(stage: object, tz: str) -> None:
    """Refuse an unknown time zone name when the stage is built, not batch after batch. An
    IANA name is checked without pandas (pandas 3 reads it through zoneinfo too), so a
    pipeline is built without importing pandas; any other spelling pandas may accept (a
    fixed offset) is tried on pandas itself."""
    try:
        zoneinfo.ZoneInfo(tz)
        return
    except (ValueError, TypeError, zoneinfo.ZoneInfoNotFoundError):
        pass
    try:
        pd.Timestamp("2000-01-01").tz_localize(tz)
    except Exception as exc:  # noqa: BLE001 - pytz and zoneinfo raise different kinds
        raise StageError(f"{stage!r}: unknown time zone {tz!r}") from exc


def localize(local: np.ndarray, tz: str, ambiguous: Ambiguous) -> np.ndarray:
    """Wall-clock datetime64[ns] values in `tz` as UTC datetime64[ns]; NaT where the wall
    time does not exist (spring forward) or, with ambiguous="reject", occurs twice (fall back;
    "earliest"/"latest" pick the first or second of the two instants)."""
    choice: Any = "NaT" if ambiguous == "reject" else np.full(len(local), ambiguous == "earliest")
    stamps = pd.DatetimeIndex(local).tz_localize(tz, ambiguous=choice, nonexistent="NaT")
    return stamps.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _reasons(frame: pd.DataFrame, bad: np.ndarray, say: Callable[..., str],
             columns: list[str]) -> np.ndarray:
    """Per-row reasons for the `bad` rows (only those: they are few): `say(*values)` with
    the row's values of `columns` as text."""
    reasons = np.full(len(frame), None, dtype=object)
    shown = [frame[c][bad].astype("string").fillna("<null>").to_numpy(dtype=object) for c in columns]
    reasons[bad] = [say(*values) for values in zip(*shown)]
    return reasons


class ParseTimestamp(BaseStage):
    """Parse `column` (text, or numbers since the epoch in `unit`) into UTC times, or into
    `tz` times when `to_utc=False`, written to `target` (default: the column itself). Text
    without an offset is wall-clock time in `tz`; text with one keeps it. `format` (strptime
    codes) fixes the layout; without it text must be ISO 8601 (nothing is guessed: a guess
    can depend on today's date). Unparseable values reject their row."""

    name = "parse_timestamp"

    def __init__(self, column: str, *, target: str | None = None, format: str | None = None,
                 unit: Literal["s", "ms", "us", "ns"] | None = None, tz: str = "UTC",
                 to_utc: bool = True, ambiguous: Ambiguous = "reject") -> None:
        self.column, self.target, self.format, self.unit = column, target or column, format, unit
        self.tz, self.to_utc, self.ambiguous = tz, to_utc, ambiguous
        check_zone(self, tz)

    def __repr__(self) -> str:
        options = [f"target={self.target!r}"] if self.target != self.column else []
        options += [f"{k}={getattr(self, k)!r}" for k in ("format", "unit") if getattr(self, k)]
        options += [f"tz={self.tz!r}"] + ([] if self.to_utc else ["to_utc=False"])
        options += [] if self.ambiguous == "reject" else [f"ambiguous={self.ambiguous!r}"]
        return f"ParseTimestamp({self.column!r}, {', '.join(options)})"

    def _parse(self, values: pd.Series) -> np.ndarray:
        """UTC datetime64[ns] of every value, NaT where it cannot be read."""
        if self.unit is not None:
            numbers = _numbers(values).astype("float64")
            stamps = pd.to_datetime(numbers, unit=self.unit, utc=True, errors="coerce")
            return to_unit(stamps, "ns").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        if pd.api.types.is_datetime64_any_dtype(values):
            if values.dt.tz is not None:
                return to_unit(values.dt.tz_convert("UTC"), "ns").dt.tz_localize(None).to_numpy()
            return localize(to_unit(values, "ns").to_numpy(), self.tz, self.ambiguous)
        text = values.astype("string").str.strip()
        fmt = self.format or "ISO8601"
        if self.format is None:
            zoned = text.str.contains(_ZONED, regex=True, na=False).to_numpy()
        else:
            zoned = np.full(len(text), "%z" in fmt or "%Z" in fmt)
        out = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
        if zoned.any():
            stamps = pd.to_datetime(text[zoned], utc=True, format=fmt, errors="coerce")
            out[zoned] = to_unit(stamps, "ns").dt.tz_localize(None).to_numpy()
        if not zoned.all():
            wall = pd.to_datetime(text[~zoned], format=fmt, errors="coerce")
            out[~zoned] = localize(to_unit(wall, "ns").to_numpy(), self.tz, self.ambiguous)
        return out

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.column])
        try:
            utc = self._parse(frame[self.column])
        except (ValueError, TypeError) as exc:  # a bad format string
            raise StageError(f"{self!r}: {exc}") from exc
        stamps = pd.Series(utc, index=frame.index).dt.tz_localize("UTC")
        out = frame.assign(**{self.target: stamps if self.to_utc else stamps.dt.tz_convert(self.tz)})
        bad = frame[self.column].notna().to_numpy() & np.isnat(utc)
        if not bad.any():
            return StageResult(kept=out)

        def say(value: str) -> str:
            return (f"parse_timestamp: column '{self.column}' value '{value}' is not a time "
                    f"({self.format or 'ISO 8601'}, {self.tz})")

        reasons = _reasons(frame, bad, say, [self.column])
        return split(out, bad, reasons, original=frame, stage=self)


class DeriveTimestamp(BaseStage):
    """Build `target` from date parts and an HHMM number (517 -> 05:17; 2400 -> midnight
    ending the day), read as wall-clock time in `tz` and stored as UTC (or in `tz` when
    `to_utc=False`). Rows whose parts are missing, not whole numbers or not a real date and
    time, or whose wall time does not exist at a DST change, are rejected with their values;
    a wall time that occurs twice is rejected unless `ambiguous` picks one."""

    name = "derive_timestamp"

    def __init__(self, *, target: str, year: str, month: str, day: str, hhmm: str,
                 tz: str = "UTC", to_utc: bool = True, ambiguous: Ambiguous = "reject") -> None:
        self.target, self.year, self.month, self.day, self.hhmm = target, year, month, day, hhmm
        self.tz, self.to_utc, self.ambiguous = tz, to_utc, ambiguous
        check_zone(self, tz)

    def __repr__(self) -> str:
        extra = ("" if self.to_utc else ", to_utc=False") + \
            ("" if self.ambiguous == "reject" else f", ambiguous={self.ambiguous!r}")
        return (f"DeriveTimestamp(target={self.target!r}, year={self.year!r}, "
                f"month={self.month!r}, day={self.day!r}, hhmm={self.hhmm!r}, tz={self.tz!r}{extra})")

    def apply(self, frame: pd.DataFrame) -> StageResult:
        parts = [self.year, self.month, self.day, self.hhmm]
        require_columns(self, frame, parts)
        year, month, day, hhmm = (_numbers(frame[c]).to_numpy(dtype="float64", na_value=np.nan)
                                  for c in parts)
        with np.errstate(invalid="ignore"):
            valid = ((np.floor(year) == year) & (np.floor(month) == month) & (np.floor(day) == day)
                     & (np.floor(hhmm) == hhmm) & (month >= 1) & (month <= 12) & (day >= 1)
                     & (hhmm >= 0) & (hhmm <= 2400) & (hhmm % 100 < 60)
                     & (year >= 1678) & (year <= 2261))
        y, m, d, t = (np.where(valid, a, 1).astype("int64") for a in (year, month, day, hhmm))
        months = ((np.where(valid, y, 1970) - 1970) * 12 + (m - 1)).astype("datetime64[M]")
        first = months.astype("datetime64[D]")
        valid &= d <= ((months + 1).astype("datetime64[D]") - first).astype("int64")
        minutes = (t // 100) * 60 + t % 100
        wall = (first + (d - 1)).astype("datetime64[ns]") + minutes.astype("timedelta64[m]")
        utc = localize(np.where(valid, wall, np.datetime64("NaT")), self.tz, self.ambiguous)
        stamps = pd.Series(utc, index=frame.index).dt.tz_localize("UTC")
        out = frame.assign(**{self.target: stamps if self.to_utc else stamps.dt.tz_convert(self.tz)})
        bad = np.isnat(utc)
        if not bad.any():
            return StageResult(kept=out)

        def say(*values: str) -> str:
            shown = " ".join(f"{column}={value}" for column, value in zip(parts, values))
            return f"derive_timestamp: {shown} is not a valid {self.tz} time"

        return split(out, bad, _reasons(frame, bad, say, parts), original=frame, stage=self)
