"""The Stage protocol: a pure DataFrame -> DataFrame step that may reject rows.

A stage returns the rows it keeps and the rows it rejects, each rejected row with a reason.
Rejected rows go to quarantine, never to the sink, and never vanish:
rows out + rows rejected == rows in, for every stage (dedupe counts its dropped duplicates
as rejected with the reason "duplicate key"; a filter counts its dropped rows as rejected with
its reason unless told `quarantine=False`, in which case they are counted as filtered).
Stages are pure: the same input gives the same output on every machine.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from etl.core.lazy import LazyModule
from stages.errors import StageError

pd = LazyModule("pandas")

#: Column added to quarantined rows: why the row was rejected.
REASON_COLUMN = "_reason"
#: Column added to quarantined rows: which stage rejected it.
STAGE_COLUMN = "_stage"


@dataclass
class StageResult:
    """Output of one stage: kept rows, and rejected rows carrying a REASON_COLUMN."""

    kept: pd.DataFrame
    rejected: pd.DataFrame | None = None


@runtime_checkable
class Stage(Protocol):
    """One cleaning step. `repr(stage)` reads like the call that built it."""

    @property
    def name(self) -> str:
        """Short name, recorded with every row the stage rejects (STAGE_COLUMN). A class
        attribute `name = "trim"` provides it."""

    def apply(self, frame: pd.DataFrame) -> StageResult:
        """Clean `frame`. Raise etl.core.errors.StageError for a configuration mistake (unknown
        column...), never for a bad row: bad rows are rejected with a reason."""


class _CheckedArguments(type):
    """The metaclass of BaseStage: calling a stage class checks the arguments against its
    constructor's signature first, so a wrong keyword, a missing or an extra argument is a
    StageError naming the stage and what it takes, not a bare TypeError from deep inside
    (dataclass or hand-written __init__ alike). A TypeError or ValueError the constructor
    itself raises on a value (a number where column names go) says the same. Unpickling and
    copying do not call the class, so they are not checked."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        problem = _argument_problem(cls, args, kwargs)
        if problem:
            raise StageError(f"{cls.__name__}: {problem}; {cls.__name__} takes "
                             f"{takes(cls)}")
        try:
            return super().__call__(*args, **kwargs)
        except StageError:
            raise
        except (TypeError, ValueError) as exc:
            raise StageError(f"{cls.__name__}: {exc}; {cls.__name__} takes {takes(cls)}") from exc


class BaseStage(metaclass=_CheckedArguments):
    """Base of every stage class in `stages`: building one with arguments it does not take
    raises StageError, e.g. `Trim: unknown argument 'column' (did you mean 'columns'?); Trim
    takes columns=[...]`, which the CLI prints as one line (exit status 2). A stage of your
    own gets the same by deriving from it."""

    __slots__ = ()


@functools.cache
def _parameters(cls: type) -> tuple[inspect.Parameter, ...]:
    """The constructor's parameters, without self (none for a class without __init__);
    worked out once per class."""
    init = cls.__init__  # type: ignore[misc]
    if init is object.__init__:
        return ()
    return tuple(inspect.signature(init).parameters.values())[1:]


def _argument_problem(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """What is wrong with calling `cls(*args, **kwargs)`, or None."""
    params = _parameters(cls)
    kinds = {p.kind for p in params}
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for given in kwargs:
            if given not in names:
                close = difflib.get_close_matches(given, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return f"unknown argument {given!r}{hint}"
    try:
        inspect.Signature(params).bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc).replace("missing a required argument:", "missing argument")
    return None


def _placeholder(param: inspect.Parameter) -> str:
    """What a value of `param` looks like, from its annotation: [...] for column lists..."""
    hint = str(param.annotation)
    if param.annotation is inspect.Parameter.empty:
        return "..."
    if "Mapping" in hint or "dict" in hint:
        return "{...}"
    if "Sequence" in hint or "list" in hint or "tuple" in hint:
        return "[...]"
    if hint.startswith(("str", "Literal")):
        return "'...'"
    if "Callable" in hint:
        return "<function>"
    if hint.startswith(("int", "float")):
        return "<number>"
    return "..."


def takes(cls: type) -> str:
    """The arguments of stage class `cls`, as a call would give them: `column='...', *,
    format='%Y-%m-%d', tz='UTC'` (required ones show what their value looks like, optional
    ones their default)."""
    parts: list[str] = []
    starred = False
    for param in _parameters(cls):
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
            starred = True
            continue
        if param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
            continue
        if param.kind is param.KEYWORD_ONLY and not starred:
            parts.append("*")
            starred = True
        default = param.default
        if default is param.empty or "factory" in repr(default):
            shown = _placeholder(param)
        else:
            shown = repr(default)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
        parts.append(f"{param.name}={shown}")
    return ", ".join(parts) if parts else "no arguments"


@dataclass
class CleanResult:
    """What a chain of stages made of one batch.

    `quarantined` keeps the index labels its rows had in the input frame, and `lineage` says
    whether those labels can be trusted: every stage kept or rejected input rows as they
    were (no row invented, split or re-indexed). Replaying quarantined rows needs that."""

    clean: pd.DataFrame
    quarantined: pd.DataFrame  # original-ish rows plus REASON_COLUMN and STAGE_COLUMN
    lineage: bool = False
    #: The input index labels of the clean rows, in order (trusted when `lineage`).
    clean_labels: pd.Index | None = None


def run_stages(frame: pd.DataFrame, stages: Sequence[Stage]) -> CleanResult:
    """Apply `stages` in order; collect every stage's rejected rows into one quarantine frame."""
    rejected: list[pd.DataFrame] = []
    lineage = frame.index.is_unique
    for stage in stages:
        before = frame.index
        result = stage.apply(frame)
        frame = result.kept
        out = result.rejected if result.rejected is not None and len(result.rejected) else None
        if lineage and not (out is None and (frame.index is before or frame.index.equals(before))):
            labels = frame.index if out is None else frame.index.append(out.index)
            lineage = labels.is_unique and bool(labels.isin(before).all())
        if out is not None:
            rejected.append(out.assign(**{STAGE_COLUMN: stage.name}))
    quarantined = pd.concat(rejected) if rejected else pd.DataFrame(
        {REASON_COLUMN: pd.Series(dtype="string"), STAGE_COLUMN: pd.Series(dtype="string")}
    )
    return CleanResult(clean=frame.reset_index(drop=True), quarantined=quarantined,
                       lineage=lineage, clean_labels=frame.index)


def stage_without(frame: pd.DataFrame, stages: Sequence[Stage],
                  column: str) -> tuple[int, Stage] | None:
    """The first stage (1-based position, stage) whose output lacks `column` although its
    input had it: the stage that renamed or dropped it. None when the input lacks it too or
    no stage removes it. Runs the stages on `frame`: pass a few rows."""
    if column not in frame.columns:
        return None
    for position, stage in enumerate(stages, start=1):
        frame = stage.apply(frame).kept
        if column not in frame.columns:
            return position, stage
    return None
