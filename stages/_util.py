"""Helpers shared by the stage modules."""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from etl.errors import StageError
from stages.base import REASON_COLUMN, StageResult

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
