"""The invariants every row-conserving stage keeps, checked the same way for the core stages
(tests/test_stages.py) and the library (tests/test_stages_library.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages import Stage
from stages.base import REASON_COLUMN


def same(left: pd.DataFrame | None, right: pd.DataFrame | None) -> None:
    """Equal frames, cell by cell (object cells may hold lists, dicts or arrays)."""
    assert (left is None) == (right is None)
    if left is None or right is None:
        return
    assert list(left.columns) == list(right.columns)
    assert list(left.dtypes) == list(right.dtypes)
    assert list(left.index) == list(right.index)
    for position in range(left.shape[1]):
        assert [repr(v) for v in left.iloc[:, position].tolist()] == \
            [repr(v) for v in right.iloc[:, position].tolist()]


def check_stage(stage: Stage, frame: pd.DataFrame) -> None:
    """Each input row is kept or rejected, once, kept rows in input order; rejects are input
    rows as they came, with a reason; the input is not changed; a second run gives an equal
    result."""
    tagged = frame.assign(_pos=np.arange(len(frame)))  # stages carry unknown columns along
    before = tagged.copy()
    result, again = stage.apply(tagged), stage.apply(tagged)
    kept = result.kept["_pos"].tolist()
    rejected = [] if result.rejected is None else result.rejected["_pos"].tolist()
    assert len(kept) + len(rejected) == len(frame), stage
    assert sorted(kept + rejected) == list(range(len(frame))), stage
    assert kept == sorted(kept), stage
    assert REASON_COLUMN not in result.kept.columns
    if rejected:
        assert result.rejected[REASON_COLUMN].notna().all()
        same(result.rejected.drop(columns=[REASON_COLUMN]), tagged.iloc[rejected])
    same(tagged, before)
    same(result.kept, again.kept)
    same(result.rejected, again.rejected)
