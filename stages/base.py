"""The Stage protocol: a pure DataFrame -> DataFrame step that may reject rows.

A stage returns the rows it keeps and the rows it rejects, each rejected row with a reason.
Rejected rows go to quarantine, never to the sink, and never vanish:
rows out + rows rejected == rows in, for every stage (dedupe counts its dropped duplicates
as rejected with the reason "duplicate key"; a filter counts its dropped rows as rejected with
its reason unless told `quarantine=False`, in which case they are counted as filtered).
Stages are pure: the same input gives the same output on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import pandas as pd

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
        if lineage:
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
