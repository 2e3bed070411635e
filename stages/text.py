"""Text stages: trim and change case of string columns. They never reject rows; nulls stay
null and the columns become pandas' "string" dtype."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from stages._util import as_list, require_columns, show
from stages.base import StageResult


class _TextStage:
    name = "text"
    label = "Text"

    def __init__(self, columns: str | Sequence[str]) -> None:
        self.columns = as_list(columns)

    def __repr__(self) -> str:
        return f"{self.label}(columns={show(self.columns)})"

    def _change(self, values: pd.Series) -> pd.Series:
        raise NotImplementedError

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.columns)
        changed = {c: self._change(frame[c].astype("string")) for c in self.columns}
        return StageResult(kept=frame.assign(**changed))



class Trim(_TextStage):
    """Strip leading and trailing whitespace."""

    name, label = "trim", "Trim"

    def _change(self, values: pd.Series) -> pd.Series:
        return values.str.strip()


class Upper(_TextStage):
    """Upper-case (codes, identifiers)."""

    name, label = "upper", "Upper"

    def _change(self, values: pd.Series) -> pd.Series:
        return values.str.upper()


class Lower(_TextStage):
    """Lower-case."""

    name, label = "lower", "Lower"

    def _change(self, values: pd.Series) -> pd.Series:
        return values.str.lower()
