"""DeltaSink: a Delta Lake table loaded exactly once, merged by key by sequence.

Real tables on local disk and on moto's S3 server; real worker processes for concurrency;
a hypothesis property for "whatever order, however often: pandas' drop_duplicates(keep=last)".
"""

from __future__ import annotations

import multiprocessing
import random
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pytest

pytest.importorskip("deltalake")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etl.sinks.delta as delta_module  # noqa: E402
from etl.core.errors import BatchError, ConfigError  # noqa: E402
from etl.sinks.base import SEQ_COLUMN, BackfillAware, Sequenced, Sink, make_seq  # noqa: E402
from etl.sinks.delta import DeltaConflict, DeltaSink  # noqa: E402

RUN_STAMP = 1_700_000_000_000


def batch(rows: Iterable[tuple[int, Any]], *, shard: int = 0, number: int = 0,
          stamp: int = RUN_STAMP) -> pd.DataFrame:
    """A batch of (id, v) rows with the sequence the runtime would give them."""
    rows = list(rows)
    return pd.DataFrame({"id": [r[0] for r in rows], "v": [r[1] for r in rows],
                         SEQ_COLUMN: [make_seq(stamp, shard, number, i) for i in range(len(rows))]})


def reference(frames: list[pd.DataFrame], key: list[str]) -> pd.DataFrame:
    """What a merge must hold: the last row per key over every input in sequence order."""
    every = pd.concat(frames, ignore_index=True).sort_values(SEQ_COLUMN, kind="stable")
    return every.drop_duplicates(key, keep="last").drop(columns=SEQ_COLUMN)


def same_rows(held: pd.DataFrame, expected: pd.DataFrame, by: list[str]) -> None:
    """Equal as sorted frames, ignoring row order, column order and integer/float widths."""
    assert sorted(held.columns) == sorted(expected.columns), (list(held.columns), list(expected.columns))
    left = held[sorted(held.columns)].sort_values(by).reset_index(drop=True)
    right = expected[sorted(expected.columns)].sort_values(by).reset_index(drop=True)
    pd.testing.assert_frame_equal(left, right, check_dtype=False)


def write(sink: DeltaSink, frame: pd.DataFrame, *, run: str = "r1", shard: int = 0,
          number: int = 0) -> int:
    return sink.write_batch(frame, run_id=run, shard=shard, batch=number)


# -- the contract -----------------------------------------------------------------------


def test_a_delta_sink_is_a_sequenced_backfill_aware_sink(tmp_path: Path) -> None:
    # Given a DeltaSink
    sink = DeltaSink(str(tmp_path / "t"), key=["id"])
    # Then it declares the capabilities it has, and describes itself without secrets
    assert isinstance(sink, Sink) and isinstance(sink, Sequenced) and isinstance(sink, BackfillAware)
    secret = DeltaSink("s3://bucket/t", key=["id"], storage_options={"AWS_SECRET_ACCESS_KEY": "hush"})
    assert "hush" not in secret.describe() and "hush" not in repr(secret)
    assert repr(secret) == ("DeltaSink('s3://bucket/t', key=['id'], write_disposition='merge', "
                            "storage_options={'AWS_SECRET_ACCESS_KEY': '***'})")
    assert "merge on id" in sink.describe()


def test_merge_holds_the_last_row_per_key_in_sequence_order(tmp_path: Path) -> None:
    # Given batches with keys repeated within and across them
    sink = DeltaSink(str(tmp_path / "t"), key=["id"])
    b0 = batch([(1, "a"), (2, "b"), (2, "b2"), (3, "c")], number=0)
    b1 = batch([(2, "x"), (4, "d"), (1, "y")], number=1)
    b2 = batch([(3, "z"), (5, "e")], shard=1, number=0)
    # When they load out of order, one of them twice (a redelivery)
    written = [write(sink, b1, number=1), write(sink, b2, shard=1), write(sink, b0),
               write(sink, b1, number=1)]
    # Then each write reports its batch's rows, and the table is pandas' keep="last"
    assert written == [3, 2, 4, 3]
    same_rows(sink.read_all(), reference([b0, b1, b2], ["id"]), ["id"])
    assert SEQ_COLUMN not in sink.read_all().columns


def test_merge_on_a_compound_key_with_odd_column_names(tmp_path: Path) -> None:
    # Given a key of two columns whose names need quoting in a Delta predicate
    sink = DeltaSink(str(tmp_path / "t"), key=["Carrier", "flight no"])
    first = pd.DataFrame({"Carrier": ["AA", "AA", "UA"], "flight no": [1, 2, 1], "v": [1, 2, 3],
                          SEQ_COLUMN: [make_seq(RUN_STAMP, 0, 0, i) for i in range(3)]})
    second = pd.DataFrame({"Carrier": ["AA", "UA"], "flight no": [2, 9], "v": [20, 90],
                           SEQ_COLUMN: [make_seq(RUN_STAMP, 0, 1, i) for i in range(2)]})
    # When both are merged
    write(sink, first)
    write(sink, second, number=1)
    # Then AA/2 is updated and UA/9 added, case and spaces kept
    same_rows(sink.read_all(), reference([first, second], ["Carrier", "flight no"]),
              ["Carrier", "flight no"])


def test_append_holds_every_row_once_even_when_a_batch_is_written_twice(tmp_path: Path) -> None:
    # Given an append sink
    sink = DeltaSink(str(tmp_path / "t"), write_disposition="append")
    b0, b1 = batch([(1, "a"), (1, "a")]), batch([(2, "b")], number=1)
    # When batch 0 is written, batch 1 twice, then batch 0 again
    assert [write(sink, b0), write(sink, b1, number=1), write(sink, b1, number=1),
            write(sink, b0)] == [2, 1, 1, 2]
    # Then every row is there once, duplicates within a batch included (append keeps rows)
    assert sorted(sink.read_all()["id"]) == [1, 1, 2]
    # And the Delta log records one application transaction per batch
    from deltalake import DeltaTable

    table = DeltaTable(str(tmp_path / "t"))
    assert table.transaction_version("etl:r1:0:0") == 1 and table.transaction_version("etl:r1:0:1") == 1
    assert table.version() == 1  # the two repeats committed nothing


def test_replace_drops_older_runs_when_the_run_finishes(tmp_path: Path) -> None:
    # Given a replace sink holding a finished run
    sink = DeltaSink(str(tmp_path / "t"), write_disposition="replace")
    write(sink, batch([(1, "old"), (2, "old")]), run="r1")
    sink.finish_run("r1", first_seq=make_seq(RUN_STAMP, 0, 0, 0))
    # When a later run loads and finishes (twice: a finish step redelivered)
    later = RUN_STAMP + 1000
    write(sink, batch([(3, "new")], stamp=later), run="r2")
    assert sorted(sink.read_all()["id"]) == [1, 2, 3]  # until the run finishes, both are there
    for _ in range(2):
        sink.finish_run("r2", first_seq=make_seq(later, 0, 0, 0))
    # Then only the later run's rows are held
    assert sink.read_all().to_dict("list") == {"id": [3], "v": ["new"]}
    # And a backfill through for_backfill appends, keeping them
    backfill = sink.for_backfill()
    write(backfill, batch([(9, "bf")], stamp=later + 1000), run="b1")
    backfill.finish_run("b1", first_seq=make_seq(later + 1000, 0, 0, 0))
    assert sorted(sink.read_all()["id"]) == [3, 9]


def test_finishing_a_run_compacts_many_small_files(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    # Given an append table of 5 one-row batches, and a threshold of 3 small files
    monkeypatch.setattr(delta_module, "COMPACT_FILES", 3)
    path = str(tmp_path / "t")
    sink = DeltaSink(path, write_disposition="append")
    for number in range(5):
        write(sink, batch([(number, f"v{number}")], number=number), number=number)
    from deltalake import DeltaTable

    assert len(DeltaTable(path).file_uris()) == 5
    # When the run finishes
    sink.finish_run("r1", first_seq=make_seq(RUN_STAMP, 0, 0, 0))
    # Then the table is one file with the same rows
    assert len(DeltaTable(path).file_uris()) == 1
    assert sorted(sink.read_all()["id"]) == [0, 1, 2, 3, 4]
    # And a batch redelivered afterwards is still known to the log: held once
    write(sink, batch([(4, "v4")], number=4), number=4)
    assert sorted(sink.read_all()["id"]) == [0, 1, 2, 3, 4]
    # And a table below the threshold is left as it is
    monkeypatch.setattr(delta_module, "COMPACT_FILES", 100)
    write(sink, batch([(9, "v9")], number=9), number=9)
    sink.finish_run("r1", first_seq=make_seq(RUN_STAMP, 0, 0, 0))
    assert len(DeltaTable(path).file_uris()) == 2


def test_for_backfill_and_with_key(tmp_path: Path) -> None:
    # Given a sink of each disposition
    path = str(tmp_path / "t")
    merge, append = DeltaSink(path), DeltaSink(path, write_disposition="append")
    replace = DeltaSink(path, write_disposition="replace", partition_by=["p"])
    # Then a backfill merges into a merge table, appends to the others
    assert merge.for_backfill() is merge and append.for_backfill() is append
    copy = replace.for_backfill()
    assert (copy.write_disposition, copy.path, copy.partition_by) == ("append", path, ("p",))
    assert replace.write_disposition == "replace"
    # And with_key binds a key on a copy, leaving the original unbound
    bound = merge.with_key(["id", "day"])
    assert bound.key == ("id", "day") and merge.key == () and bound.uri == merge.uri
    assert DeltaSink("file://" + path).uri == path  # file:// is a local path
    with pytest.raises(ValueError, match="list of column names"):
        merge.with_key("id")  # type: ignore[arg-type]


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    # A disposition the sink does not offer, a string key: ValueError at construction
    with pytest.raises(ValueError, match="write_disposition must be one of") as bad:
        DeltaSink(path, write_disposition="upsert")
    assert "\n" not in str(bad.value)
    with pytest.raises(ValueError, match="not the string"):
        DeltaSink(path, key="id")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local path, file:// or s3://"):
        DeltaSink("ftp://host/t")
    # A batch without the sequence column, a merge without a key: BatchError, one line
    frame = batch([(1, "a")])
    with pytest.raises(BatchError, match=f"no {SEQ_COLUMN} column") as missing:
        write(DeltaSink(path, key=["id"]), frame.drop(columns=SEQ_COLUMN))
    with pytest.raises(BatchError, match="merge needs a key") as keyless:
        write(DeltaSink(path), frame)
    for error in (missing, keyless):
        assert "\n" not in str(error.value) and "run r1 shard 0 batch 0" in str(error.value)
    # A sequence that is not 40 digits, a null key: BatchError
    with pytest.raises(BatchError, match="40-digit"):
        write(DeltaSink(path, key=["id"]), frame.assign(**{SEQ_COLUMN: ["7"]}))
    with pytest.raises(BatchError, match="hold nulls"):
        write(DeltaSink(path, key=["id"]), batch([(None, "a")]))
    with pytest.raises(ValueError, match="first_seq"):
        DeltaSink(path, write_disposition="replace").finish_run("r1", first_seq="12")
    assert not (tmp_path / "t").exists()  # nothing was written


def test_a_missing_deltalake_package_is_one_config_error(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    # Given no deltalake package
    monkeypatch.setitem(sys.modules, "deltalake", None)
    # When a batch is written, Then the error says what to install, on one line
    with pytest.raises(ConfigError) as error:
        write(DeltaSink(str(tmp_path / "t"), key=["id"]), batch([(1, "a")]))
    assert str(error.value) == ("DeltaSink needs the deltalake package: "
                                "pip install 'dramatiq-etl[delta]'")


# -- schema: new columns, nulls, changed types ------------------------------------------


def test_new_columns_and_all_null_batches_fit_the_table(tmp_path: Path) -> None:
    # Given a table created from a batch whose "n" is an integer column
    sink = DeltaSink(str(tmp_path / "t"), key=["id"])
    seq = lambda b, n: [make_seq(RUN_STAMP, 0, b, i) for i in range(n)]  # noqa: E731
    b0 = pd.DataFrame({"id": [1, 2], "n": [10, 20], SEQ_COLUMN: seq(0, 2)})
    # And batches where "n" is all None (object), has a NaN (float), lacks "n", adds "extra"
    b1 = pd.DataFrame({"id": [3], "n": [None], SEQ_COLUMN: seq(1, 1)})
    b2 = pd.DataFrame({"id": [1, 4], "n": [float("nan"), 40.0], SEQ_COLUMN: seq(2, 2)})
    b3 = pd.DataFrame({"id": [5], "extra": ["x"], SEQ_COLUMN: seq(3, 1)})
    b4 = pd.DataFrame({"id": [6], "later": [None], SEQ_COLUMN: seq(4, 1)})
    # When they are merged
    for number, frame in enumerate([b0, b1, b2, b3, b4]):
        write(sink, frame, number=number)
    # Then the integer column stays an integer column, nulls where the batch had none
    from deltalake import DeltaTable

    types = {f.name: str(f.type) for f in DeltaTable(str(tmp_path / "t")).schema().fields}
    assert types["n"] == 'PrimitiveType("long")' and types["extra"] == 'PrimitiveType("string")'
    assert "later" not in types  # a column that never held a value has no type to give it
    held = sink.read_all().sort_values("id").reset_index(drop=True)
    assert held["id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert held["n"].isna().tolist() == [True, False, True, False, True, True]
    assert held["n"].dropna().astype(int).tolist() == [20, 40]
    assert held["extra"].tolist()[4] == "x" and held["extra"].isna().sum() == 5


def test_a_column_whose_type_changed_is_a_batch_error_naming_it(tmp_path: Path) -> None:
    # Given a table whose "n" holds integers
    sink = DeltaSink(str(tmp_path / "t"), write_disposition="append")
    write(sink, pd.DataFrame({"n": [1], SEQ_COLUMN: [make_seq(RUN_STAMP, 0, 0, 0)]}))
    # When a batch brings text in "n", or fractions
    for number, values in ((1, ["abc"]), (2, [1.5])):
        frame = pd.DataFrame({"n": values, SEQ_COLUMN: [make_seq(RUN_STAMP, 0, number, 0)]})
        # Then the batch fails for good with one line naming the column
        with pytest.raises(BatchError, match="column 'n'") as error:
            write(sink, frame, number=number)
        assert "\n" not in str(error.value)
    assert sink.read_all()["n"].tolist() == [1]


# -- conflicts: the commit path retries, and never doubles ------------------------------


def _stale_tables(monkeypatch: pytest.MonkeyPatch, sink: DeltaSink, stale: int) -> list[int]:
    """Make the sink's first `stale` attempts start from version 0 of its table, as a
    worker that read the table before another one committed; returns the versions used."""
    from deltalake import DeltaTable

    fresh, used = DeltaSink._table, []

    def table(self: DeltaSink) -> Any:
        if len(used) < stale:
            used.append(0)
            return DeltaTable(self.uri, version=0)
        got = fresh(self)
        used.append(got.version())
        return got

    monkeypatch.setattr(DeltaSink, "_table", table)
    monkeypatch.setattr(delta_module, "BACKOFF_BASE", 0.001)
    return used


@pytest.mark.parametrize("disposition", ["append", "merge"])
def test_a_commit_that_lost_a_race_is_retried_and_held_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, disposition: str) -> None:
    # Given a table at version 1 holding batch 1, written by another worker
    path = str(tmp_path / "t")
    b0, b1 = batch([(1, "a")]), batch([(1, "b"), (2, "c")], number=1)
    other = DeltaSink(path, key=["id"], write_disposition=disposition)
    write(other, b0)
    write(other, b1, number=1)
    # When this worker, having read version 0, writes batch 1 again (a concurrent redelivery)
    sink = DeltaSink(path, key=["id"], write_disposition=disposition)
    used = _stale_tables(monkeypatch, sink, stale=1)
    assert write(sink, b1, number=1) == 2
    # Then its first commit conflicted, the second attempt saw the table as it is
    assert used == [0, 1]
    # And the batch is held once
    held = sorted(map(tuple, DeltaSink(path).read_all()[["id", "v"]].values.tolist()))
    expected = [(1, "b"), (2, "c")] if disposition == "merge" else [(1, "a"), (1, "b"), (2, "c")]
    assert held == expected


def test_a_merge_of_other_keys_is_rebased_without_a_retry(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    # Given a table at version 1, where another worker merged keys 1 and 2
    path = str(tmp_path / "t")
    other = DeltaSink(path, key=["id"])
    write(other, batch([(1, "a")]))
    write(other, batch([(1, "b"), (2, "c")], number=1), number=1)
    # When this worker, having read version 0, merges keys 50 and 60 only
    sink = DeltaSink(path, key=["id"])
    used = _stale_tables(monkeypatch, sink, stale=1)
    write(sink, batch([(50, "x"), (60, "y")], number=2), number=2)
    # Then delta-rs finds nothing it read changed (the merge read keys 50..60 only) and
    # commits it on top, in one attempt, losing nothing
    assert used == [0]
    from deltalake import DeltaTable

    held = DeltaTable(path).to_pandas().sort_values("id")
    assert held[["id", "v"]].values.tolist() == [[1, "b"], [2, "c"], [50, "x"], [60, "y"]]


def test_conflicts_that_never_end_raise_a_retryable_error(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    # Given a batch already committed, and a worker that always reads version 0
    path = str(tmp_path / "t")
    write(DeltaSink(path, write_disposition="append"), batch([(1, "a")]))
    write(DeltaSink(path, write_disposition="append"), batch([(2, "b")], number=1), number=1)
    sink = DeltaSink(path, write_disposition="append")
    monkeypatch.setattr(delta_module, "MAX_ATTEMPTS", 3)
    used = _stale_tables(monkeypatch, sink, stale=99)
    # When it writes batch 1, Then it gives up after the bounded attempts with an error the
    # framework retries (not an EtlError, which would be permanent)
    with pytest.raises(DeltaConflict, match="concurrent commits won 3 times") as error:
        write(sink, batch([(2, "b")], number=1), number=1)
    assert used == [0, 0, 0] and not isinstance(error.value, (BatchError, ConfigError))
    from deltalake import DeltaTable

    assert sorted(DeltaTable(path).to_pandas()["id"]) == [1, 2]  # and nothing doubled


@pytest.mark.parametrize("disposition", ["merge", "append"])
def test_two_writers_creating_the_table_at_once_hold_each_row_once(tmp_path: Path,
                                                                   disposition: str) -> None:
    # Given two writers that both find no table, over and over (delta-rs, left to its
    # commit retries, would commit the losing create as version 1: rows added blindly)
    import threading

    for attempt in range(25):
        path = str(tmp_path / f"t{attempt}")
        frames = [batch([(1, "a"), (2, "b")], number=0), batch([(2, "c"), (3, "d")], number=1)]
        start = threading.Barrier(2)

        def load(number: int) -> None:
            sink = DeltaSink(path, key=["id"], write_disposition=disposition)
            start.wait()
            write(sink, frames[number], number=number)

        threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
        # When both create it at the same moment
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Then each batch is held once: one writer created the table, the other merged or
        # appended into it
        held = DeltaSink(path).read_all()
        expected = (reference(frames, ["id"]) if disposition == "merge"
                    else pd.concat(frames).drop(columns=SEQ_COLUMN))
        same_rows(held, expected, ["id", "v"])


# -- the property: any order, any redelivery, several runs ------------------------------

_rows = st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(-50, 50))),
                 min_size=1, max_size=12)


@st.composite
def loads(draw: st.DrawFn) -> tuple[list[tuple[str, int, int, pd.DataFrame]], list[int]]:
    """Runs of sharded batches with the sequence the runtime gives them, and a load order:
    a permutation of every batch, with some batches repeated (redeliveries)."""
    batches = []
    for run in range(draw(st.integers(1, 3))):
        stamp = RUN_STAMP + run * 60_000
        for shard in range(draw(st.integers(1, 2))):
            for number in range(draw(st.integers(1, 3))):
                frame = batch(draw(_rows), shard=shard, number=number, stamp=stamp)
                batches.append((f"run{run}", shard, number, frame))
    order = draw(st.permutations(range(len(batches))))
    again = draw(st.lists(st.sampled_from(range(len(batches))), max_size=3))
    order = list(order)
    for index in again:  # a redelivery comes after the first delivery
        order.insert(draw(st.integers(order.index(index) + 1, len(order))), index)
    return batches, order


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=loads())
def test_merge_equals_pandas_keep_last_whatever_the_order(tmp_path_factory: pytest.TempPathFactory,
                                                          case: Any) -> None:
    # Given runs of batches with repeated keys and null values, loaded in a random order,
    # some twice
    batches, order = case
    merge = DeltaSink(str(tmp_path_factory.mktemp("merge") / "t"), key=["id"])
    append = DeltaSink(str(tmp_path_factory.mktemp("append") / "t"), write_disposition="append")
    # When every load is done into a merge table and an append table
    for index in order:
        run, shard, number, frame = batches[index]
        for sink in (merge, append):
            assert sink.write_batch(frame, run_id=run, shard=shard, batch=number) == len(frame)
    # Then the merge table is pandas' drop_duplicates(keep="last") over all rows by sequence
    frames = [b[3] for b in batches]
    expected = reference(frames, ["id"])
    held = merge.read_all()
    assert held["id"].is_unique
    if "v" not in held.columns:  # every v was null: the column never got a type
        assert expected["v"].isna().all()
        held = held.assign(v=None)
    same_rows(held.astype({"v": "Float64"}), expected.astype({"v": "Float64"}), ["id"])
    # And the append table holds every row exactly once
    rows = pd.concat(frames, ignore_index=True)
    assert len(append.read_all()) == len(rows)
    assert sorted(append.read_all()["id"]) == sorted(rows["id"])


# -- real processes at the same time ----------------------------------------------------


def _load_in_process(path: str, disposition: str, loads: list[tuple[str, int, int, pd.DataFrame]],
                     start: Any) -> int:
    """A worker process: wait for the others, then write its batches, retrying a batch the
    sink gave up on as the framework would. Returns how many such retries it needed."""
    sink = DeltaSink(path, key=["id"], write_disposition=disposition)
    start.wait(120)
    retries = 0
    for run, shard, number, frame in loads:
        while True:
            try:
                sink.write_batch(frame, run_id=run, shard=shard, batch=number)
                break
            except DeltaConflict:
                retries += 1
    return retries


@pytest.mark.parametrize("disposition", ["merge", "append"])
def test_three_processes_load_one_table_at_once(tmp_path: Path, disposition: str) -> None:
    # Given 9 batches over 3 shards with keys shared across them, each process loading its
    # shard's batches and one batch of another shard (a concurrent redelivery)
    rng = random.Random(7)
    batches = [(f"r{shard}", shard, number,
                batch([(rng.randrange(40), rng.randrange(1000)) for _ in range(30)],
                      shard=shard, number=number))
               for shard in range(3) for number in range(3)]
    plans = [[b for b in batches if b[1] == p] + [batches[(p * 3 + 4) % 9]] for p in range(3)]
    path = str(tmp_path / "t")
    # When the 3 processes (spawned) load at the same time
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(3)
        with context.Pool(3) as pool:
            retries = pool.starmap(_load_in_process, [(path, disposition, plan, start)
                                                      for plan in plans], chunksize=1)
    # Then the table is what one process loading everything once would give
    frames = [b[3] for b in batches]
    held = DeltaSink(path).read_all()
    if disposition == "merge":
        assert held["id"].is_unique
        same_rows(held, reference(frames, ["id"]), ["id"])
    else:
        rows = pd.concat(frames, ignore_index=True).drop(columns=SEQ_COLUMN)
        same_rows(held, rows, ["id", "v"])
    assert len(retries) == 3  # every process got through its batches


# -- S3 ---------------------------------------------------------------------------------


def test_merge_into_s3_through_the_endpoint_setting(monkeypatch: pytest.MonkeyPatch,
                                                    s3_endpoint: str, s3_bucket: str) -> None:
    # Given the S3 endpoint in the settings (ETL_S3_ENDPOINT_URL) and a table on the bucket
    monkeypatch.setenv("ETL_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    sink = DeltaSink(f"s3://{s3_bucket}/t", key=["id"])
    b0, b1 = batch([(1, "a"), (2, "b")]), batch([(2, "B"), (3, "c")], number=1)
    # When two batches are merged, one of them twice
    for number, frame in ((0, b0), (1, b1), (0, b0)):
        write(sink, frame, number=number)
    # Then deltalake reads the merged rows back from the bucket
    from deltalake import DeltaTable

    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    table = DeltaTable(f"s3://{s3_bucket}/t", storage_options=options)
    same_rows(table.to_pandas().drop(columns=SEQ_COLUMN), reference([b0, b1], ["id"]), ["id"])
    assert sink.options() == {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true"}


def test_missing_s3_credentials_are_one_config_error(monkeypatch: pytest.MonkeyPatch,
                                                     s3_endpoint: str, s3_bucket: str) -> None:
    # Given no AWS credentials anywhere
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    sink = DeltaSink(f"s3://{s3_bucket}/t", key=["id"],
                     storage_options={"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true"})
    # When a batch is written, Then one line says what is missing (no Rust trace of causes)
    with pytest.raises(ConfigError, match="no usable AWS credentials") as error:
        write(sink, batch([(1, "a")]))
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)


# -- other readers ----------------------------------------------------------------------


def test_the_table_reads_the_same_in_deltalake_duckdb_and_pandas(tmp_path: Path) -> None:
    # Given a merged table (an update, so some files were rewritten and are no longer live)
    path = str(tmp_path / "t")
    sink = DeltaSink(path, key=["id"], partition_by=["part"])
    frames = [batch([(i, f"v{i}") for i in range(n, n + 50)], number=k).assign(part=k % 2)
              for k, n in enumerate((0, 25, 60))]
    for number, frame in enumerate(frames):
        write(sink, frame, number=number)
    expected = reference(frames, ["id"])
    # When deltalake, duckdb and pandas (pyarrow) read it
    import duckdb
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    table = DeltaTable(path)
    by_deltalake = table.to_pandas().drop(columns=SEQ_COLUMN)
    installed = duckdb.sql("select installed from duckdb_extensions() "
                           "where extension_name = 'delta'").fetchall()
    if installed and installed[0][0]:  # the extension is downloaded on first use: not offline
        query = f"select * exclude ({SEQ_COLUMN}) from delta_scan('{path}')"
    else:  # the live files of the log, as Parquet (partition values live in the log)
        files = ", ".join(f"'{f}'" for f in table.file_uris())
        query = (f"select * exclude ({SEQ_COLUMN}) from read_parquet([{files}], "
                 "hive_partitioning = true)")
    by_duckdb = duckdb.sql(query).df()
    by_pandas = table.to_pyarrow_dataset().to_table().to_pandas().drop(columns=SEQ_COLUMN)
    # Then each holds exactly the merged rows
    for held in (by_deltalake, by_duckdb, by_pandas, sink.read_all()):
        assert len(held) == 110
        same_rows(held, expected, ["id"])
    assert {len(ds.dataset(table.file_uris(), format="parquet").to_table())} == {110}
