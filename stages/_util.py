"""Helpers shared by the stage modules."""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

from etl.core.lazy import LazyModule
from stages.errors import StageError
from stages.base import REASON_COLUMN, StageResult

pd = LazyModule("pandas")
np = LazyModule("numpy")

log = logging.getLogger("stages")


def require_columns(stage: object, frame: pd.DataFrame, columns: Iterable[str]) -> None:
    """Raise StageError naming the stage, the missing columns and the columns present."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StageError(f"{stage!r}: unknown column(s) {', '.join(map(repr, missing))}; "
                         f"columns are: {', '.join(map(str, frame.columns))}")


def split(frame: pd.DataFrame, bad: pd.Series | np.ndarray, reasons: pd.Series | np.ndarray | str,
          *, original: pd.DataFrame | None = None, stage: object = None) -> StageResult:
    """Keep the rows of `frame` where `bad` is False; reject the others with their reason.

    `bad` and `reasons` are matched to rows by position (not by index label, which may repeat).
    Rejected rows are taken from `original` when given (the stage's input): quarantine shows
    the values as they arrived, not as a failed conversion left them.
    """
    mask = np.asarray(bad, dtype=bool)
    if not mask.any():
        return StageResult(kept=frame)
    source = frame if original is None else original
    rejected = source[mask].copy()
    if isinstance(reasons, str):
        rejected[REASON_COLUMN] = pd.Series(reasons, index=rejected.index, dtype="string")
    else:
        values = np.asarray(reasons, dtype=object)[mask]
        rejected[REASON_COLUMN] = pd.array(values, dtype="string")
    log.debug("%r rejected %d of %d rows", stage, int(mask.sum()), len(mask))
    return StageResult(kept=frame[~mask], rejected=rejected)


def as_list(columns: str | Sequence[str]) -> list[str]:
    """One column name or several, as a list."""
    return [columns] if isinstance(columns, str) else list(columns)


def show(values: Sequence[str]) -> str:
    """A list of names as Python would print it: ['a', 'b']."""
    return "[" + ", ".join(repr(v) for v in values) + "]"


def shown(value: object, limit: int = 120) -> str:
    """A cell as quarantine shows it: '<null>' for a null, else its text, cut at `limit`."""
    if is_null(value):
        return "<null>"
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_null(value: object) -> bool:
    """True for None, NaN, NaT and pd.NA; False for anything else, lists and dicts included."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return False


def call_repr(stage: object) -> str:
    """repr of a dataclass stage as the call that builds it: the fields named in the class's
    `_positional` come first, then every keyword option that differs from its default.
    Tuples print as lists (they were given as lists)."""
    positional: tuple[str, ...] = getattr(stage, "_positional", ())
    parts: list[str] = []
    for f in dataclasses.fields(stage):  # type: ignore[arg-type]
        if not f.repr:
            continue
        value = getattr(stage, f.name)
        text = show(value) if isinstance(value, tuple) else repr(value)
        if f.name in positional:
            parts.append(text)
        elif f.default is not dataclasses.MISSING and value == f.default:
            continue
        elif f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        else:
            parts.append(f"{f.name}={text}")
    return f"{type(stage).__name__}({', '.join(parts)})"
