"""Helpers shared by the stage modules."""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from etl.errors import StageError
from stages.base import REASON_COLUMN, StageResult


def require_columns(stage: object, frame: pd.DataFrame, columns: Iterable[str]) -> None:
    """Raise StageError naming the stage, the missing columns and the columns present."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StageError(f"{stage!r}: unknown column(s) {', '.join(map(repr, missing))}; "
                         f"columns are: {', '.join(map(str, frame.columns))}")


def split(frame: pd.DataFrame, bad: pd.Series, reasons: pd.Series | str) -> StageResult:
    """Keep the rows where `bad` is False; reject the others with their reason."""
    if not bad.any():
        return StageResult(kept=frame)
    rejected = frame[bad].copy()
    rejected[REASON_COLUMN] = reasons[bad] if isinstance(reasons, pd.Series) else reasons
    return StageResult(kept=frame[~bad], rejected=rejected)


def as_list(columns: str | Sequence[str]) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def show(values: Sequence[str]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"
