"""Validation rules: checks that rows must pass, each naming the rule, the column and the
offending value when a row fails. Every rule is also a stage on its own, rejecting the rows
that fail it; stages.Validate applies several at once. Nulls pass every rule except NotNull
(stages.rows.NotNull, which is a rule too): a missing value is not an out-of-range one."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import as_list, call_repr, is_null, require_columns, shown, split
from stages.base import BaseStage, StageResult
from stages.types import _numbers


@runtime_checkable
class Rule(Protocol):
    """A check per row: `check(frame)` gives, per row, why it fails or None."""

    @property
    def name(self) -> str:
        """The rule's name, first word of each reason it gives."""

    def check(self, frame: pd.DataFrame) -> np.ndarray:
        """Per row: why it fails, or None. Raise StageError for a configuration mistake."""


class _Rule(BaseStage):
    """A rule is also a stage on its own: it rejects the rows that fail it."""

    __repr__ = call_repr

    def check(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def apply(self, frame: pd.DataFrame) -> StageResult:
        reasons = self.check(frame)
        return split(frame, reasons != None, reasons, stage=self)  # noqa: E711 - elementwise


class _ColumnRule(_Rule):
    """A rule on the non-null values of one column."""

    name: ClassVar[str] = "rule"
    column: str

    def _problems(self, values: pd.Series) -> dict[int, str]:
        """Row position -> what is wrong with its (non-null) value."""
        raise NotImplementedError

    def check(self, frame: pd.DataFrame) -> np.ndarray:
        require_columns(self, frame, [self.column])
        values = frame[self.column]
        reasons = np.full(len(frame), None, dtype=object)
        for row, problem in self._problems(values).items():
            reasons[row] = (f"{self.name}: column '{self.column}' value "
                            f"'{shown(values.iloc[row])}' {problem}")
        return reasons


def _bound(value: Any) -> Any:
    """A Range bound as something comparable: a number, or a Timestamp for time text."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    try:
        return pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise StageError(f"Range: bound {value!r} is neither a number nor a time") from exc


@dataclass(frozen=True, repr=False)
class Range(_ColumnRule):
    """`column` lies within [min, max] (either may be None; both ends included). Number
    bounds read the column as numbers (text that is not a number fails); time bounds
    ("2013-01-01", with a zone for zoned columns) need a timestamp column."""

    column: str
    _: KW_ONLY
    min: Any = None
    max: Any = None
    name: ClassVar[str] = "range"
    _positional: ClassVar[tuple[str, ...]] = ("column",)

    def __post_init__(self) -> None:
        low, high = _bound(self.min), _bound(self.max)
        if low is None and high is None:
            raise StageError(f"{self!r}: give min, max or both")
        try:
            if low is not None and high is not None and low > high:
                raise StageError(f"{self!r}: min is greater than max")
        except TypeError as exc:
            raise StageError(f"{self!r}: min and max are of different kinds") from exc

    def _problems(self, values: pd.Series) -> dict[int, str]:
        low, high = _bound(self.min), _bound(self.max)
        timed = isinstance(low, pd.Timestamp) or isinstance(high, pd.Timestamp)
        if timed != pd.api.types.is_datetime64_any_dtype(values):
            raise StageError(f"{self!r}: column {self.column!r} is {values.dtype}; "
                             f"{'time' if timed else 'number'} bounds do not apply to it")
        present = values.notna().to_numpy()
        numbers = values if timed else _numbers(values)
        try:
            below = present & (numbers < low).fillna(False).to_numpy(dtype=bool) \
                if low is not None else np.zeros(len(values), dtype=bool)
            above = present & (numbers > high).fillna(False).to_numpy(dtype=bool) \
                if high is not None else np.zeros(len(values), dtype=bool)
        except TypeError as exc:  # a zoned column and a bound without a zone, or vice versa
            raise StageError(f"{self!r}: {exc} (a column with a time zone needs bounds with "
                             f"one, such as '2013-01-01T00:00Z')") from exc
        problems = {int(i): f"is below the minimum {self.min}" for i in np.flatnonzero(below)}
        problems.update({int(i): f"is above the maximum {self.max}" for i in np.flatnonzero(above)})
        if not timed:
            nan = present & numbers.isna().to_numpy()
            problems.update({int(i): "is not a number" for i in np.flatnonzero(nan)})
        return problems


@dataclass(frozen=True, repr=False)
class AllowedValues(_ColumnRule):
    """`column` holds one of `values` (Python equality: 1, 1.0 and True are one value)."""

    column: str
    values: Sequence[Any]
    name: ClassVar[str] = "allowed_values"
    _positional: ClassVar[tuple[str, ...]] = ("column", "values")
    _allowed: frozenset[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.values, str) or not len(self.values):
            raise StageError(f"AllowedValues: values must be a non-empty list, not {self.values!r}")
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "_allowed", frozenset(self.values))

    def _allows(self, value: Any) -> bool:
        try:
            return value in self._allowed
        except TypeError:  # an unhashable cell (a list) is none of the values
            return False

    def _problems(self, values: pd.Series) -> dict[int, str]:
        return {i: "is not one of the allowed values" for i, v in enumerate(values.tolist())
                if not is_null(v) and not self._allows(v)}


@dataclass(frozen=True, repr=False)
class Regex(_ColumnRule):
    """The text of `column` matches `pattern` (Python `re`), as a whole (`full=True`) or
    anywhere in it (`full=False`). Numbers are matched as their text."""

    column: str
    pattern: str
    _: KW_ONLY
    full: bool = True
    name: ClassVar[str] = "regex"
    _positional: ClassVar[tuple[str, ...]] = ("column", "pattern")
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))
        except re.error as exc:
            raise StageError(f"{self!r}: bad pattern: {exc}") from exc

    def _problems(self, values: pd.Series) -> dict[int, str]:
        match = self._compiled.fullmatch if self.full else self._compiled.search
        problem = f"does not match the pattern {self.pattern}"
        return {i: problem for i, v in enumerate(values.tolist())
                if not is_null(v) and match(str(v)) is None}


@dataclass(frozen=True, repr=False)
class Unique(_Rule):
    """No two rows of a batch share a value of `columns` (all such rows fail: which one is
    right is not for a rule to guess; Dedupe keeps one). Rows with a null in `columns` are
    not compared. Uniqueness across batches is the sink's key."""

    columns: str | Sequence[str]
    name: ClassVar[str] = "unique"

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(as_list(self.columns)))

    def check(self, frame: pd.DataFrame) -> np.ndarray:
        require_columns(self, frame, self.columns)
        keys = frame[list(self.columns)]
        try:
            dup = keys.duplicated(keep=False).to_numpy() & keys.notna().all(axis=1).to_numpy()
        except TypeError as exc:
            raise StageError(f"{self!r}: the key holds unhashable values (lists?): {exc}") from exc
        reasons = np.full(len(frame), None, dtype=object)
        rows = list(keys[dup].itertuples(index=False, name=None))
        counts = Counter(rows)
        what = (f"column '{self.columns[0]}'" if len(self.columns) == 1
                else f"columns ({', '.join(self.columns)})")
        reasons[dup] = [f"unique: {what} value '{shown(r[0] if len(r) == 1 else r)}' appears "
                        f"{counts[r]} times" for r in rows]
        return reasons

