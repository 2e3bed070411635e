"""Nested data from API payloads: Explode a list column into one row per element, Flatten a
dict (or JSON object text) column into one column per leaf. A cell of the wrong shape
rejects its row with the value; it never crashes the batch."""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Iterator, Literal, Sequence

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import call_repr, is_null, require_columns, shown, split
from stages.base import BaseStage, StageResult

_LISTS = (list, tuple, np.ndarray)  # a list read back from Parquet is a NumPy array


@dataclass(frozen=True, repr=False)
class Explode(BaseStage):
    """One row per element of the list in `column` (order lines of an order); the other
    columns repeat. `position` names an optional column with the element's 0-based place in
    its list (with the parent key, a unique key for the new rows). A null or empty list
    gives one row with a null element (`empty="null"`) or rejects the row
    (`empty="reject"`); a value that is not a list rejects its row. This stage adds rows:
    rows out + rows rejected >= rows in."""

    column: str
    _: KW_ONLY
    empty: Literal["null", "reject"] = "null"
    position: str | None = None
    name: ClassVar[str] = "explode"
    _positional: ClassVar[tuple[str, ...]] = ("column",)

    def __post_init__(self) -> None:
        if self.empty not in ("null", "reject"):
            raise StageError(f"{self!r}: empty must be 'null' or 'reject'")
        if self.position == self.column:
            raise StageError(f"{self!r}: position must name a column other than {self.column!r}")

    __repr__ = call_repr

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.column])
        cells = frame[self.column].array
        counts = np.zeros(len(frame), dtype=np.int64)
        reasons = np.full(len(frame), None, dtype=object)
        for i, cell in enumerate(cells):
            if isinstance(cell, _LISTS):
                counts[i] = len(cell)
            elif not is_null(cell):
                reasons[i] = f"explode: column '{self.column}' value '{shown(cell)}' is not a list"
        if self.empty == "reject":
            empty = (counts == 0) & (reasons == None)  # noqa: E711 - elementwise
            reasons[empty] = f"explode: column '{self.column}' is null or an empty list"
        bad = reasons != None  # noqa: E711 - elementwise
        rows = np.flatnonzero(~bad)
        repeats = np.maximum(counts[rows], 1)
        taken = np.repeat(rows, repeats)
        elements: list[Any] = []
        places: list[Any] = []
        for row in rows:
            cell = cells[row]
            if counts[row]:
                elements.extend(cell)
                places.extend(range(counts[row]))
            else:
                elements.append(None)
                places.append(None)
        out = frame.iloc[taken]
        added = {self.column: pd.Series(elements, index=out.index, dtype=object)}
        if self.position is not None:
            added[self.position] = pd.Series(pd.array(places, dtype="Int64"), index=out.index)
        kept = out.assign(**added)
        if not bad.any():
            return StageResult(kept=kept)
        return StageResult(kept=kept, rejected=split(frame, bad, reasons, stage=self).rejected)


def _leaves(value: dict[Any, Any], path: str, sep: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every non-dict value under `value`; lists are leaves."""
    for key, inner in value.items():
        name = f"{path}{sep}{key}" if path else str(key)
        if isinstance(inner, dict):
            yield from _leaves(inner, name, sep)
        else:
            yield name, inner


@dataclass(frozen=True, repr=False)
class Flatten(BaseStage):
    """Turn the dicts in `column` (or JSON object text, as an API returns it) into columns:
    {"user": {"id": 7}} in column "payload" becomes column "payload.user.id" (or
    "payload_user_id" with sep="_"; without the "payload" part with prefix=False). The new
    columns take the original column's place, sorted by name, so every batch orders them
    alike; `keys` fixes the exact list (missing leaves are null, others are not taken), so
    that every batch also has the same columns. Lists stay values (see Explode). A null
    gives nulls; text that is not a JSON object, or any other value, rejects its row. The
    new columns hold Python values: follow with CastSchema to type them (a column mixing
    numbers and text cannot be staged as Parquet)."""

    column: str
    _: KW_ONLY
    sep: str = "."
    prefix: bool = True
    keys: Sequence[str] | None = None
    name: ClassVar[str] = "flatten"
    _positional: ClassVar[tuple[str, ...]] = ("column",)

    def __post_init__(self) -> None:
        if not self.sep:
            raise StageError(f"{self!r}: sep must not be empty")
        if self.keys is not None:
            keys = [self.keys] if isinstance(self.keys, str) else list(self.keys)
            object.__setattr__(self, "keys", tuple(keys))

    __repr__ = call_repr

    def _dict(self, cell: Any) -> dict[Any, Any] | str:
        """The cell as a dict, or why it is not one."""
        if isinstance(cell, dict):
            return cell
        if isinstance(cell, (str, bytes)):
            try:
                parsed = json.loads(cell)
            except ValueError:
                return "is not JSON"
            return parsed if isinstance(parsed, dict) else "is not a JSON object"
        return "is not a dict"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, [self.column])
        rows: list[dict[str, Any]] = []
        reasons = np.full(len(frame), None, dtype=object)
        for i, cell in enumerate(frame[self.column].array):
            parsed = {} if is_null(cell) else self._dict(cell)
            if isinstance(parsed, str):
                reasons[i] = f"flatten: column '{self.column}' value '{shown(cell)}' {parsed}"
                parsed = {}
            start = self.column if self.prefix else ""
            rows.append(dict(_leaves(parsed, start, self.sep)))
        names = list(self.keys) if self.keys is not None else sorted({k for r in rows for k in r})
        clashes = [n for n in names if n in frame.columns and n != self.column]
        if clashes:
            raise StageError(f"{self!r}: flattened column(s) {', '.join(map(repr, clashes))} "
                             f"would replace existing columns; use prefix or sep to tell apart")
        new = pd.DataFrame({n: pd.Series([r.get(n) for r in rows], dtype=object) for n in names},
                           index=pd.RangeIndex(len(frame)))
        where = list(frame.columns).index(self.column)
        plain = frame.reset_index(drop=True)  # joined by position: index labels may repeat
        kept = pd.concat([plain.iloc[:, :where], new, plain.iloc[:, where + 1:]], axis=1)
        kept.index = frame.index
        bad = reasons != None  # noqa: E711 - elementwise
        return split(kept, bad, reasons, original=frame, stage=self)
