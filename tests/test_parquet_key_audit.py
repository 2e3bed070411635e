"""ParquetSink's key audit: how many keys the dataset holds in more than one part file.

The run summary's "keys in more than one batch" comes from `ParquetSink.repeated_keys`,
counted in Arrow (etl.sinks.parquet_keys) after the workers end. These cases pin what it
counts (a key in several files once, a repeat inside one file not at all, null a key value
like any other, files without the key skipped) and that the Arrow count equals the pandas
groupby it replaced, which still counts the key types where the two could disagree.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.core.names import part_file_name
from etl.sinks import parquet_keys
from etl.sinks.parquet import ParquetSink


def _write(folder: Path, tables: list[pa.Table]) -> ParquetSink:
    folder.mkdir(parents=True, exist_ok=True)
    for shard, table in enumerate(tables):
        pq.write_table(table, folder / part_file_name("run-1", shard, 0))
    return ParquetSink(str(folder))


def _reference(tables: list[pa.Table], key: list[str]) -> int:
    """Keys (tuples of Python values, None included) found in more than one table."""
    files: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    for number, table in enumerate(tables):
        for row in zip(*(table.column(k).to_pylist() for k in key)):
            files[row].add(number)
    return sum(len(held) > 1 for held in files.values())


def test_a_key_in_several_files_counts_once_and_a_repeat_inside_a_file_not_at_all(
        tmp_path: Path) -> None:
    # Given three part files: id 1 in all three, id 2 twice in the first file only, id 3 in
    # two files, and a null id in two files
    tables = [pa.table({"id": [1, 2, 2, None], "v": ["a", "b", "c", "d"]}),
              pa.table({"id": [1, 3, None], "v": ["e", "f", "g"]}),
              pa.table({"id": [1, 3, 4], "v": ["h", "i", "j"]})]
    sink = _write(tmp_path / "out", tables)
    # When the sink counts its repeated keys
    repeated = sink.repeated_keys(["id"])
    # Then ids 1, 3 and null are repeated; id 2 (one file) and id 4 are not
    assert repeated == 3 == _reference(tables, ["id"])


def test_a_key_of_several_columns_is_compared_whole(tmp_path: Path) -> None:
    # Given files keyed on (carrier, flight, departure time), some parts null
    times = pa.array([0, 60, 60, None], pa.timestamp("ns", tz="UTC"))
    tables = [pa.table({"carrier": ["UA", "UA", "AA", None], "flight": [1, 1, 1, 7],
                        "t": times}),
              pa.table({"carrier": ["UA", "AA", "AA", None], "flight": [1, 1, 2, 7],
                        "t": pa.array([60, 60, 60, None], pa.timestamp("ns", tz="UTC"))})]
    sink = _write(tmp_path / "out", tables)
    # When counted
    repeated = sink.repeated_keys(["carrier", "flight", "t"])
    # Then only whole keys held by both files count: (UA, 1, 60), (AA, 1, 60), (null, 7, null)
    assert repeated == 3 == _reference(tables, ["carrier", "flight", "t"])


def test_files_without_the_key_columns_are_skipped_and_no_folder_is_none(tmp_path: Path) -> None:
    # Given two files holding id 1, and a third file without an id column
    tables = [pa.table({"id": [1]}), pa.table({"id": [1]}), pa.table({"other": [1]})]
    sink = _write(tmp_path / "out", tables)
    # When counted, and counted on a folder that is not here
    # Then the file without the key is no error, and a missing folder says None (not 0)
    assert sink.repeated_keys(["id"]) == 1
    assert ParquetSink(str(tmp_path / "elsewhere")).repeated_keys(["id"]) is None
    assert _write(tmp_path / "one", tables[:1]).repeated_keys(["id"]) == 0


def test_float_keys_keep_pandas_equality(tmp_path: Path) -> None:
    # Given a float key holding NaN in one file and null in another, -0.0 and 0.0, and 1.5 in both
    tables = [pa.table({"x": pa.array([float("nan"), -0.0, 1.5], pa.float64())}),
              pa.table({"x": pa.array([None, 0.0, 1.5], pa.float64())})]
    sink = _write(tmp_path / "out", tables)
    # When counted
    repeated = sink.repeated_keys(["x"])
    # Then it is pandas' count (NaN is null, -0.0 is 0.0): three keys in both files
    assert repeated == parquet_keys._in_several_pandas(tables, ["x"]) == 3


def test_a_key_typed_differently_in_two_files_is_compared_by_value(tmp_path: Path) -> None:
    # Given id 1 as int32 in one file and as int64 in another
    tables = [pa.table({"id": pa.array([1, 2], pa.int32())}),
              pa.table({"id": pa.array([1, 3], pa.int64())})]
    sink = _write(tmp_path / "out", tables)
    # When counted
    # Then the values are compared, as pandas compared them: id 1 is repeated
    assert sink.repeated_keys(["id"]) == 1


def test_folding_many_columns_renumbers_instead_of_overflowing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a key of three columns, and a fold limit so low that every column renumbers first
    tables = [pa.table({"a": [1, 2, 3, 1], "b": ["x", "y", "z", "x"], "c": [True, False, None, True]}),
              pa.table({"a": [1, 2, 3, 4], "b": ["x", "y", "q", "x"], "c": [True, False, None, None]})]
    monkeypatch.setattr(parquet_keys, "_LIMIT", 3)
    # When counted in Arrow
    repeated = parquet_keys.keys_in_several(tables, ["a", "b", "c"])
    # Then the count is the same as without renumbering: (1, x, True) and (2, y, False)
    assert repeated == 2 == _reference(tables, ["a", "b", "c"])


_values = st.one_of(st.none(), st.integers(0, 3))
_texts = st.one_of(st.none(), st.sampled_from(["a", "b", "ü", ""]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(_values, _texts), max_size=8), min_size=2, max_size=5))
def test_the_arrow_count_equals_the_pandas_groupby(files: list[list[tuple[Any, Any]]]) -> None:
    # Given any few tables of (int, text) keys with nulls and repeats
    tables = [pa.table({"n": pa.array([n for n, _ in rows], pa.int64()),
                        "s": pa.array([s for _, s in rows], pa.string())}) for rows in files]
    # When the keys held by several tables are counted in Arrow and in pandas
    for key in (["n"], ["s"], ["n", "s"]):
        arrow = parquet_keys.keys_in_several(tables, key)
        pandas = parquet_keys._in_several_pandas(tables, key)
        # Then both counts agree, and agree with plain Python sets
        assert arrow == pandas == _reference(tables, key)


def test_with_hash_shard_columns_only_shards_of_several_files_are_read(tmp_path: Path) -> None:
    # Given one run's files: shard 0 in two batches sharing key (1, a), shard 1 in one file,
    # and shard 2 in one file that could not be read (it would fail the count if opened)
    folder = tmp_path / "out"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "g": ["a", "a"]}), folder / part_file_name("run-1", 0, 0))
    pq.write_table(pa.table({"id": [1, 3], "g": ["a", "a"]}), folder / part_file_name("run-1", 0, 1))
    pq.write_table(pa.table({"id": [4], "g": ["b"]}), folder / part_file_name("run-1", 1, 0))
    (folder / part_file_name("run-1", 2, 0)).write_bytes(b"not parquet")
    sink = ParquetSink(str(folder))
    # When counted knowing the run's hash plan assigns rows by g, a column of the key
    # Then only shard 0's two files are read, and its one shared key is counted
    assert sink.repeated_keys(["id", "g"], shard_columns=["g"]) == 1
    # And a plan column outside the key, or files of two runs, read every file as before
    with pytest.raises(Exception):
        sink.repeated_keys(["id"], shard_columns=["g"])
    pq.write_table(pa.table({"id": [4], "g": ["b"]}), folder / part_file_name("run-2", 1, 0))
    with pytest.raises(Exception):
        sink.repeated_keys(["id", "g"], shard_columns=["g"])


def test_with_hash_shard_columns_one_file_per_shard_reads_nothing(tmp_path: Path) -> None:
    # Given one run that wrote each shard in one batch (the file contents do not matter)
    folder = tmp_path / "out"
    folder.mkdir()
    for shard in range(3):
        (folder / part_file_name("run-1", shard, 0)).write_bytes(b"never read")
    # When counted with the run's hash columns inside the key
    # Then no key can be in two files: 0, without opening any
    assert ParquetSink(str(folder)).repeated_keys(["id", "g"], shard_columns=["g"]) == 0


def test_with_hash_shard_columns_the_count_over_several_shards_is_their_sum(tmp_path: Path) -> None:
    # Given one run whose shards 0 and 1 were each written in three batches, each shard with
    # its own repeated keys (a key holds its shard's g, so no key is in two shards)
    folder = tmp_path / "out"
    folder.mkdir()
    batches = {0: [[(1, "a"), (2, "a")], [(1, "a"), (3, "a")], [(3, "a"), (1, "a")]],
               1: [[(1, "b")], [(1, "b"), (5, "b")], [(6, "b")]]}
    tables = []
    for shard, parts in batches.items():
        for batch, rows in enumerate(parts):
            table = pa.table({"id": [r[0] for r in rows], "g": [r[1] for r in rows]})
            pq.write_table(table, folder / part_file_name("run-1", shard, batch))
            tables.append(table)
    # When counted knowing the run's hash plan assigns rows by g
    # Then it is the keys in several files of either shard: (1, a), (3, a), (1, b)
    counted = ParquetSink(str(folder)).repeated_keys(["id", "g"], shard_columns=["g"])
    assert counted == 3 == _reference(tables, ["id", "g"])


def test_shards_counted_as_they_loaded_are_not_read_again(tmp_path: Path) -> None:
    # Given one run's files: shard 0 in two readable batches sharing id 1, shard 1 in two
    # files that cannot be read, whose count the process that loaded them made (2)
    folder = tmp_path / "out"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "g": ["a", "a"]}), folder / part_file_name("run-1", 0, 0))
    pq.write_table(pa.table({"id": [1, 3], "g": ["a", "a"]}), folder / part_file_name("run-1", 0, 1))
    for batch in (0, 1):
        (folder / part_file_name("run-1", 1, batch)).write_bytes(b"never read")
    sink = ParquetSink(str(folder))
    # When audited with that count
    # Then shard 1's files are not opened, and the total is shard 0's 1 plus shard 1's 2
    assert sink.repeated_keys(["id", "g"], shard_columns=["g"], run_id="run-1",
                              counted={1: 2}) == 3
    # And counts of another run than the files' are not used: shard 1 is read (and fails)
    with pytest.raises(Exception):
        sink.repeated_keys(["id", "g"], shard_columns=["g"], run_id="run-2", counted={1: 2})


def _checkpoint(shard: int, batches: int, *, loaded: int | None = None,
                fetch_done: bool = True) -> Any:
    from etl.stores.state import Checkpoint

    return Checkpoint(run_id="r", shard=shard, fetch_done=fetch_done, batches_fetched=batches,
                      batches_loaded=batches if loaded is None else loaded)


def test_loaded_keys_vouch_only_for_shards_whose_every_batch_this_process_loaded() -> None:
    from etl.runtime.loaded_keys import LoadedKeys

    # Given the keys of batches cleaned here: shard 0's two batches both loaded from this
    # process's clean, shard 1's second batch loaded from elsewhere (unstaged), shard 2's
    # second batch never loaded here, shard 3 not fetched to its end yet
    keys = LoadedKeys()
    tables = {0: [[1, 2], [1, 3]], 1: [[1], [1]], 2: [[5], [5]], 3: [[7], [7]]}
    for shard, batches in tables.items():
        for batch, ids in enumerate(batches):
            keys.stage("r", shard, batch, pa.table({"id": ids}))
    for shard, batch in [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0), (3, 1)]:
        keys.loaded("r", shard, batch)
    keys.unstaged("r", 1, 1)
    checkpoints = [_checkpoint(0, 2), _checkpoint(1, 2), _checkpoint(2, 2, loaded=1),
                   _checkpoint(3, 2, fetch_done=False)]
    # When counted for the run
    counts = keys.counts("r", checkpoints, ["id"])
    # Then only shard 0 has a count (id 1 in both batches); the others are left to the files
    assert counts == {0: 1}
    # And another run, or a forgotten one, has none
    assert keys.counts("other", checkpoints, ["id"]) == {}
    keys.forget("r")
    assert keys.counts("r", checkpoints, ["id"]) == {}


def test_loaded_keys_past_their_row_limit_keep_nothing_for_the_run() -> None:
    from etl.runtime.loaded_keys import LoadedKeys

    # Given a limit of 3 key rows and a run whose two batches hold 4
    keys = LoadedKeys(max_rows=3)
    keys.stage("r", 0, 0, pa.table({"id": [1, 2]}))
    keys.loaded("r", 0, 0)
    keys.stage("r", 0, 1, pa.table({"id": [1, 3]}))
    keys.loaded("r", 0, 1)
    # When counted, Then no shard is vouched for: the files are read instead
    assert keys.counts("r", [_checkpoint(0, 2)], ["id"]) == {}


def test_a_shard_settled_as_it_completes_is_counted_once_and_its_keys_freed() -> None:
    from etl.runtime.loaded_keys import LoadedKeys

    # Given shard 0's two batches loaded here (id 1 in both), and shard 1 whose second batch
    # was loaded elsewhere
    keys = LoadedKeys()
    for shard, batch, ids in [(0, 0, [1, 2]), (0, 1, [1, 3]), (1, 0, [4, 5])]:
        keys.stage("r", shard, batch, pa.table({"id": ids}))
        keys.loaded("r", shard, batch)
    assert keys.rows == 6
    # When each shard is settled as its last load completes
    keys.settle("r", _checkpoint(0, 2), ["id"])
    keys.settle("r", _checkpoint(1, 2), ["id"])
    # Then nothing is kept any more, shard 0's count stays for the run's audit, and shard 1
    # is left to the files
    assert keys.rows == 0
    assert keys.counts("r", [_checkpoint(0, 2), _checkpoint(1, 2)], ["id"]) == {0: 1}
    keys.forget("r")
    assert keys.counts("r", [_checkpoint(0, 2)], ["id"]) == {}
