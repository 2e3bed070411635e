"""Raw batches as slices of their shard converted once (etl.runtime.shard_frames): every
batch must come out as its own Arrow -> pandas conversion would give it, and nothing may be
held once a shard's last batch is taken."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from etl.runtime.shard_frames import ShardFrames


def _shard(rows: int = 100) -> pa.Table:
    """A shard's rows as a file source gathers them: several chunks, every kind of column
    the fast path takes, an integer column with nulls in some batches only."""
    ids = np.arange(rows)
    sparse = pa.array([None if i in (5, 6) else int(i) for i in ids], type=pa.int64())
    table = pa.table({
        "id": ids,
        "ratio": np.where(ids % 7 == 0, np.nan, ids / 3),
        "name": pa.array([f"n{i}" if i % 9 else None for i in ids], type=pa.string()),
        "flag": ids % 2 == 0,
        "sparse": sparse,
        "at": pa.array(ids * 60, type=pa.timestamp("s", tz="UTC")),
    })
    return pa.concat_tables([table.slice(0, 30), table.slice(30, 45), table.slice(75)])


def _batches(whole: pa.Table, size: int) -> list[tuple[pa.Table, int]]:
    return [(whole.slice(begin, size), begin) for begin in range(0, whole.num_rows, size)]


def test_each_batch_is_what_its_own_conversion_gives_and_the_shard_is_let_go() -> None:
    # Given a shard cut in batches of 20 rows (nulls of "sparse" in the first batch only)
    whole, frames = _shard(), ShardFrames()
    # When each batch is taken in turn
    for batch, begin in _batches(whole, 20):
        got = frames.frame(batch, whole, begin)
        # Then it equals the batch's own conversion: values, dtypes and labels
        pd.testing.assert_frame_equal(got, batch.to_pandas(use_threads=False))
    # and the shard's frame went with its last batch
    assert frames._rows == 0 and not frames._frames


def test_a_batch_without_the_nulls_its_shard_has_is_converted_alone() -> None:
    # Given a shard whose integer column has nulls in its first batch only
    whole, frames = _shard(), ShardFrames()
    (first, _), (second, begin) = _batches(whole, 50)
    # When both are taken, Then the first is a float column as its own conversion makes
    # it, the second integers
    assert frames.frame(first, whole, 0)["sparse"].dtype == np.float64
    assert frames.frame(second, whole, begin)["sparse"].dtype == np.int64


def test_the_shard_is_converted_once_for_all_its_batches() -> None:
    # Given a shard whose frame is held after its first batch (no integer column with
    # nulls in some batches only: such a batch is converted alone, see the first test)
    whole, frames = _shard().drop_columns(["sparse"]), ShardFrames()
    (first, _), (second, begin) = _batches(whole, 40)[:2]
    frames.frame(first, whole, 0)
    held = frames._frames[id(whole)][1]
    # When the next batch is taken, Then it is a slice of that frame
    got = frames.frame(second, whole, begin)
    assert np.shares_memory(got["id"].to_numpy(), held["id"].to_numpy())


def test_a_stage_writing_to_its_batch_changes_no_other_batch() -> None:
    # Given two batches of one shard, both slices of its frame, the first changed in place
    # by a stage
    whole, frames = _shard().drop_columns(["sparse"]), ShardFrames()
    (first, _), (second, begin) = _batches(whole, 50)
    taken = frames.frame(first, whole, 0)
    taken.loc[:, "ratio"] = -1.0
    taken["id"] += 1000
    # When the second is taken, Then it is as cut
    pd.testing.assert_frame_equal(frames.frame(second, whole, begin),
                                  second.to_pandas(use_threads=False))


def test_schemas_converted_by_more_than_their_types_go_batch_by_batch() -> None:
    # Given shards with a dictionary column, and with pandas metadata
    coded = pa.table({"kind": pa.array(["a", "b", "c", "a"] * 10).dictionary_encode()})
    described = pa.Table.from_pandas(pd.DataFrame({"n": pd.array(range(40), dtype="Int64")}))
    for whole in (coded, described):
        frames = ShardFrames()
        # When a batch of each is taken
        batch = whole.slice(10, 10)
        got = frames.frame(batch, whole, 10)
        # Then it is converted alone, and nothing is held
        pd.testing.assert_frame_equal(got, batch.to_pandas(use_threads=False))
        assert not frames._frames


def test_what_is_held_stays_under_its_bound() -> None:
    # Given a bound of 150 rows and two shards of 100
    frames = ShardFrames(max_rows=150)
    one, two = _shard(), _shard()
    # When a batch of each is taken (neither shard finished)
    frames.frame(one.slice(0, 10), one, 0)
    frames.frame(two.slice(0, 10), two, 0)
    # Then only the later shard is held
    assert frames._rows == 100 and list(frames._frames) == [id(two)]
    # and the earlier one still comes out right, converted again
    pd.testing.assert_frame_equal(frames.frame(one.slice(10, 10), one, 10),
                                  one.slice(10, 10).to_pandas(use_threads=False))
