"""What the runtime does for the pipeline's key: check that the cleaned batches have it, and
give a key-honouring sink (etl.sinks.base.Sequenced) each row's sequence.

A row's sequence is (run, shard, batch, row in the raw payload): the run's creation time
orders runs (a replay keeps the stamp of the run whose rows it re-drives, since they are
that run's rows, late), and within a run the position in the source orders rows. A merge
keeps, per key, the row with the greatest sequence, so the table a run leaves does not depend
on which batch loaded first, on redeliveries, or on where a worker was killed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from etl.core.lazy import LazyModule
from etl.sinks.base import SEQ_COLUMN, SEQ_ROW_DIGITS, make_seq
from stages.base import stage_without

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")
pc = LazyModule("pyarrow.compute")

if TYPE_CHECKING:
    from etl.stores.state import RunRecord, StateStore


def run_stamp(run: "RunRecord", state: "StateStore") -> int:
    """The stamp that orders `run`'s rows among all runs: its creation time in ms, or that
    of the run it replays."""
    original = run.params.get("original_run")
    if original:
        found = state.get_run(original)
        if found is not None:
            run = found
    return int(run.created_at.timestamp() * 1000)


def with_sequence(frame: pd.DataFrame, *, stamp: int, shard: int, batch: int,
                  rows: Sequence[int] | np.ndarray) -> pd.DataFrame:
    """`frame` with SEQ_COLUMN: `rows` are the rows' ordinals in their raw payload."""
    ordinals = np.asarray(rows, dtype=np.int64)
    if len(ordinals) != len(frame):
        raise ValueError(f"{len(ordinals)} ordinals for {len(frame)} rows")
    if len(ordinals) and (ordinals.min() < 0 or ordinals.max() >= 10 ** SEQ_ROW_DIGITS):
        raise ValueError("row ordinal out of range for a sequence")
    prefix = make_seq(stamp, shard, batch, 0)[:-SEQ_ROW_DIGITS]
    digits = pc.utf8_lpad(pc.cast(pa.array(ordinals), pa.string()), SEQ_ROW_DIGITS, "0")
    text = pc.binary_join_element_wise(prefix, digits, "")
    out = frame.copy(deep=False)
    out[SEQ_COLUMN] = pd.array(text, dtype=pd.ArrowDtype(pa.string()))
    return out


def missing_key(key: Sequence[str], stages: Sequence[object], raw: pd.DataFrame,
                cleaned: Sequence[str]) -> str | None:
    """None when every key column is in the `cleaned` columns, else one line naming the
    first missing column and, when a stage renamed or dropped it, that stage. `raw` is the
    batch the stages ran on (a few rows of it are cleaned again to find the stage)."""
    absent = [k for k in key if k not in cleaned]
    if not absent:
        return None
    column = absent[0]
    found = stage_without(raw.head(50), stages, column)  # type: ignore[arg-type]
    if found is not None:
        position, stage = found
        cause = f"stage {position} {stage!r} renamed or dropped it"
    elif column in raw.columns:
        cause = "no stage removed it on a sample of the batch"
    else:
        cause = "the source has no such column either"
    hint = f"; the cleaned columns are {', '.join(map(str, cleaned))}" if len(cleaned) <= 12 else ""
    return (f"key column {column!r} is not in the cleaned output: {cause}. Name the key as "
            f"the stages leave it, Pipeline(key=[...]){hint}")


__all__ = ["missing_key", "run_stamp", "with_sequence"]
