"""Backfill windows: the rows of a source with start <= column < end.

A backfill run is named by its pipeline, shard plan and window (etl.core.names.backfill_run_id),
so the same window triggered twice (cron firing again, a retry by hand, two schedulers) lands
on the same run: it resumes an unfinished one, and a finished one loads nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from etl.core.errors import ConfigError, SourceError
from etl.core.lazy import LazyModule

pa = LazyModule("pyarrow")
pc = LazyModule("pyarrow.compute")


@dataclass(frozen=True)
class Window:
    """Half-open interval [start, end) over one column. Bounds are written as the user gave
    them (ISO dates or times, or numbers) and converted to the column's type when applied;
    a naive time is taken as UTC for a time-zone-aware column."""

    column: str
    start: str
    end: str

    def describe(self) -> str:
        return f"{self.start} <= {self.column} < {self.end}"

    def to_dict(self) -> dict[str, str]:
        return {"column": self.column, "start": self.start, "end": self.end}

    def _bound(self, text: str, kind: pa.DataType) -> Any:
        try:
            if pa.types.is_timestamp(kind):
                moment = datetime.fromisoformat(text)
                if kind.tz and moment.tzinfo is None:
                    moment = moment.replace(tzinfo=timezone.utc)
                return pa.scalar(moment, type=pa.timestamp("us", tz=kind.tz) if kind.tz else pa.timestamp("us"))
            if pa.types.is_date(kind):
                return pa.scalar(date.fromisoformat(text[:10]), type=pa.date32())
            if pa.types.is_integer(kind) or pa.types.is_floating(kind):
                return pa.scalar(float(text))
        except ValueError as exc:
            raise ConfigError(f"window bound {text!r} does not fit column {self.column} "
                              f"({kind}): {exc}") from None
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return pa.scalar(text)
        raise ConfigError(f"cannot window on column {self.column} of type {kind}")

    def validate(self) -> None:
        """Reject an empty or reversed window before any work starts."""
        for kind in (pa.timestamp("us"), pa.float64(), pa.string()):
            parsed = []
            for text in (self.start, self.end):
                try:
                    parsed.append(self._bound(text, kind))
                except ConfigError:
                    pass
            if len(parsed) == 1:
                raise ConfigError(f"--start {self.start} and --end {self.end} are not of one "
                                  "kind (both dates/times, or both numbers)")
            if not parsed:
                continue
            low, high = parsed
            if not pc.less(low, high).as_py():
                raise ConfigError(f"backfill window is empty: --start {self.start} is not before "
                                  f"--end {self.end}")
            return

    def apply(self, table: pa.Table) -> pa.Table:
        """The rows of `table` inside the window (nulls are outside)."""
        if self.column not in table.column_names:
            raise SourceError(f"window column {self.column} is not in the source; columns are: "
                              f"{', '.join(table.column_names)}")
        values = table.column(self.column)
        low, high = self._bound(self.start, values.type), self._bound(self.end, values.type)
        keep = pc.and_(pc.greater_equal(values, low), pc.less(values, high))
        return table.filter(pc.fill_null(keep, False))
