"""Row stages: filters, null checks, dedupe and derived columns. Dropped rows are rejected
with a reason and go to quarantine: rows out + rows rejected == rows in."""

from __future__ import annotations

from functools import lru_cache
from types import CodeType
from typing import Callable, Literal, Sequence

from etl.core.lazy import LazyModule
from stages.errors import StageError
from stages._util import as_list, require_columns, show, split
from stages.base import BaseStage, StageResult

pd = LazyModule("pandas")
np = LazyModule("numpy")


class _Columns(dict):  # type: ignore[type-arg]
    """Name lookup for the fast path: a column name resolves to that column."""

    def __init__(self, frame: pd.DataFrame) -> None:
        super().__init__()
        self.frame = frame

    def __missing__(self, name: str) -> pd.Series:
        return self.frame[name]


@lru_cache(maxsize=256)
def _compiled(expr: str) -> CodeType | None:
    try:
        return compile(expr, "<stage expression>", "eval")
    except SyntaxError:
        return None  # pandas-only syntax (backticks, @vars): pandas evaluates it


def _evaluate(stage: object, frame: pd.DataFrame, expr: str) -> pd.Series:
    """`expr` over `frame`'s columns. Plain Python over Series first (compiled once, ~0.1 ms),
    pandas' own DataFrame.eval (~3 ms a call) for anything that needs its syntax."""
    code = _compiled(expr)
    if code is not None:
        try:
            result = eval(code, {"__builtins__": {}}, _Columns(frame))  # noqa: S307 - pipeline code
            if isinstance(result, pd.Series) and len(result) == len(frame):
                return result
        except Exception:  # noqa: BLE001 - fall back to pandas' evaluator and its errors
            pass
    try:
        result = frame.eval(expr)
    except Exception as exc:  # noqa: BLE001 - any failure is a bad expression
        raise StageError(f"{stage!r}: cannot evaluate {expr!r}: {exc}; "
                         f"columns are: {', '.join(map(str, frame.columns))}") from exc
    if not isinstance(result, pd.Series) or len(result) != len(frame):
        raise StageError(f"{stage!r}: {expr!r} must give one value per row")
    return result


def _condition(stage: object, frame: pd.DataFrame, expr: str) -> np.ndarray:
    """`expr` as a True/False per row (null counts as False); anything but booleans is a
    configuration error, not something to read as truthy."""
    result = _evaluate(stage, frame, expr)
    if not pd.api.types.is_bool_dtype(result) and not (
            result.dtype == object and result.dropna().map(type).isin([bool, np.bool_]).all()):
        raise StageError(f"{stage!r}: {expr!r} must be a condition (True/False per row), "
                         f"got {result.dtype} values")
    return result.fillna(False).to_numpy(dtype=bool)


class DropRows(BaseStage):
    """Reject the rows where `where` (a pandas expression) is true, with `reason`."""

    name = "drop_rows"

    def __init__(self, where: str, *, reason: str) -> None:
        self.where, self.reason = where, reason

    def __repr__(self) -> str:
        return f"DropRows({self.where!r}, reason={self.reason!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        return split(frame, _condition(self, frame, self.where), self.reason, stage=self)


class Filter(BaseStage):
    """Keep the rows where `expr` is true; reject the others with `reason`."""

    name = "filter"

    def __init__(self, expr: str, *, reason: str) -> None:
        self.expr, self.reason = expr, reason

    def __repr__(self) -> str:
        return f"Filter({self.expr!r}, reason={self.reason!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        return split(frame, ~_condition(self, frame, self.expr), self.reason, stage=self)


class NotNull(BaseStage):
    """Validation: reject rows with a null in any of `columns`; the reason names the first
    such column ("not-null: column 'x' is null")."""

    name = "not_null"

    def __init__(self, columns: str | Sequence[str]) -> None:
        self.columns = as_list(columns)

    def __repr__(self) -> str:
        return f"NotNull(columns={show(self.columns)})"

    def _reason(self, column: str) -> str:
        return f"not-null: column '{column}' is null"

    def check(self, frame: pd.DataFrame) -> np.ndarray:
        """Per row: why it fails (naming its first null column), or None. As a rule of
        stages.Validate."""
        require_columns(self, frame, self.columns)
        reasons = np.full(len(frame), None, dtype=object)
        for column in self.columns:
            new = frame[column].isna().to_numpy() & (reasons == None)  # noqa: E711
            reasons[new] = self._reason(column)
        return reasons

    def apply(self, frame: pd.DataFrame) -> StageResult:
        reasons = self.check(frame)
        return split(frame, reasons != None, reasons, stage=self)  # noqa: E711 - elementwise


class DropNulls(NotNull):
    """Cleaning: drop rows with a null in any of `columns`, to quarantine with `reason` (by
    default "null in column 'x'", naming the first such column)."""

    name = "drop_nulls"

    def __init__(self, columns: str | Sequence[str], *, reason: str | None = None) -> None:
        super().__init__(columns)
        self.reason = reason

    def __repr__(self) -> str:
        extra = "" if self.reason is None else f", reason={self.reason!r}"
        return f"DropNulls(columns={show(self.columns)}{extra})"

    def _reason(self, column: str) -> str:
        return self.reason if self.reason is not None else f"null in column '{column}'"


class Dedupe(BaseStage):
    """Keep one row per key (the first or last seen); reject the others as duplicates."""

    name = "dedupe"

    def __init__(self, key: str | Sequence[str], *, keep: Literal["first", "last"] = "first") -> None:
        if keep not in ("first", "last"):
            raise StageError(f"Dedupe: keep must be 'first' or 'last', not {keep!r}")
        self.key, self.keep = as_list(key), keep

    def __repr__(self) -> str:
        return f"Dedupe(key={show(self.key)}, keep={self.keep!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.key)
        dup = frame.duplicated(subset=self.key, keep=self.keep).to_numpy()
        return split(frame, dup, f"duplicate key ({', '.join(self.key)})", stage=self)


class Derive(BaseStage):
    """Add or replace `column` from a pandas expression or a function of the frame."""

    name = "derive"

    def __init__(self, column: str, expr: str | Callable[[pd.DataFrame], pd.Series]) -> None:
        self.column, self.expr = column, expr

    def __repr__(self) -> str:
        expr = self.expr if isinstance(self.expr, str) else getattr(self.expr, "__name__", "<fn>")
        return f"Derive({self.column!r}, {expr!r})"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        if isinstance(self.expr, str):
            values = _evaluate(self, frame, self.expr)
        else:
            values = self.expr(frame)
            if not isinstance(values, pd.Series) or len(values) != len(frame):
                raise StageError(f"{self!r}: the function must return a Series with one value "
                                 f"per row, got {type(values).__name__}")
            values = values.set_axis(frame.index)  # by position, like an expression's result
        return StageResult(kept=frame.assign(**{self.column: values}))
