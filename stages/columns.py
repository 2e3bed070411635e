"""Column stages: names and selection. They never reject rows."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from etl.core.lazy import LazyModule
from stages.errors import StageError
from stages._util import as_list, require_columns, show
from stages.base import BaseStage, StageResult

pd = LazyModule("pandas")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^0-9a-zA-Z]+")


def snake_case(name: str) -> str:
    """"Dep Time" -> "dep_time", "depTime" -> "dep_time", " ARR-delay " -> "arr_delay"."""
    return _NON_WORD.sub("_", _CAMEL.sub("_", str(name).strip())).strip("_").lower()


class SnakeCaseColumns(BaseStage):
    """Rename every column to snake_case; two columns colliding is a configuration error."""

    name = "snake_case_columns"

    def __repr__(self) -> str:
        return "SnakeCaseColumns()"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        names = [snake_case(c) for c in frame.columns]
        if len(set(names)) != len(names):
            clashes = sorted({n for n in names if names.count(n) > 1})
            raise StageError(f"SnakeCaseColumns(): columns collide as {', '.join(clashes)}")
        if names == list(frame.columns):
            return StageResult(kept=frame)
        return StageResult(kept=frame.set_axis(names, axis=1))


class Rename(BaseStage):
    """Rename columns by an explicit mapping."""

    name = "rename"

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)

    def __repr__(self) -> str:
        return f"Rename({self.mapping!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.mapping)
        names = [self.mapping.get(c, c) for c in frame.columns]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise StageError(f"{self!r}: two columns would be named {', '.join(map(repr, clashes))}; "
                             f"columns are: {', '.join(map(str, frame.columns))}")
        return StageResult(kept=frame.rename(columns=self.mapping))


class Select(BaseStage):
    """Keep only these columns, in this order."""

    name = "select"

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = as_list(columns)

    def __repr__(self) -> str:
        return f"Select(columns={show(self.columns)})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.columns)
        return StageResult(kept=frame[self.columns])


class DropColumns(BaseStage):
    """Remove these columns."""

    name = "drop_columns"

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = as_list(columns)

    def __repr__(self) -> str:
        return f"DropColumns(columns={show(self.columns)})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.columns)
        return StageResult(kept=frame.drop(columns=self.columns))
