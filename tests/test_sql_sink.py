"""SqlSink on the machine's real PostgreSQL and MariaDB, and on SQLite: a merge equals
pandas' drop_duplicates(key, keep="last") over every input, a batch is loaded exactly once by
one transaction with its ledger row, values keep their types, mistakes are one clear line."""

from __future__ import annotations

import multiprocessing
import tempfile
import uuid
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.core.errors import BatchError, ConfigError, UnsupportedURL
from etl.sinks.base import SEQ_COLUMN, BackfillAware, Sequenced, Sink, make_seq
from tests.conftest import sql_server_url

sa = pytest.importorskip("sqlalchemy")

from etl.sinks.sql import SqlSink  # noqa: E402
from etl.sinks.sql_table import driver_url  # noqa: E402

DATABASES = ("postgresql", "mariadb", "sqlite")
STAMP = 1_767_225_600_000  # 2026-01-01, in ms: the run stamp of "run 1"


def url_of(kind: str, directory: str | Path) -> str:
    return f"sqlite:///{Path(directory) / 'sink.db'}" if kind == "sqlite" else sql_server_url(kind)


class Place:
    """A table and a ledger of their own in one database, dropped after the test."""

    def __init__(self, url: str) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.url, self.table, self.ledger = url, f"etl_sink_{suffix}", f"etl_loads_{suffix}"
        self.engine = sa.create_engine(driver_url(url))
        self.sinks: list[SqlSink] = []

    def sink(self, **options: Any) -> SqlSink:
        made = SqlSink(self.url, table=self.table, ledger_table=self.ledger,
                       **{"key": ["id"], **options})
        self.sinks.append(made)
        return made

    def execute(self, statement: str) -> list[Any]:
        with self.engine.begin() as conn:
            result = conn.exec_driver_sql(statement)
            return list(result) if result.returns_rows else []

    def loads(self) -> list[tuple[str, int, int, int]]:
        """The ledger's rows of this table: (run, shard, batch, rows)."""
        q = "`" if self.engine.dialect.name in ("mysql", "mariadb") else '"'
        return sorted(tuple(r) for r in self.execute(
            f"SELECT run_id, shard, batch, {q}rows{q} FROM {self.ledger}"))

    def drop(self) -> None:
        for made in self.sinks:
            made.close()
        for name in (self.table, self.ledger):
            self.execute(f"DROP TABLE IF EXISTS {name}")
        self.engine.dispose()


@pytest.fixture(params=DATABASES)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    made = Place(url_of(request.param, tmp_path))
    try:
        yield made
    finally:
        made.drop()


def batch(columns: dict[str, Any], *, run: int = STAMP, shard: int = 0, number: int = 0) -> pd.DataFrame:
    """A batch as the runtime hands it over: the rows and their sequence."""
    frame = pd.DataFrame(columns)
    frame[SEQ_COLUMN] = [make_seq(run, shard, number, row) for row in range(len(frame))]
    return frame


def reference(frames: list[pd.DataFrame], key: list[str]) -> pd.DataFrame:
    """What a merge must hold: pandas' last row per key over every input in sequence order."""
    every = pd.concat(frames, ignore_index=True).sort_values(SEQ_COLUMN)
    return every.drop_duplicates(key, keep="last").drop(columns=SEQ_COLUMN)


def assert_holds(sink: SqlSink, expected: pd.DataFrame, key: list[str]) -> None:
    held = sink.read_all()
    assert SEQ_COLUMN not in held.columns
    assert not held.duplicated(key).any(), "a key is held twice"
    order = lambda f: f[list(expected.columns)].sort_values(key).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(order(held), order(expected), check_dtype=False)


def write(sink: SqlSink, frame: pd.DataFrame, run: str = "r1", shard: int = 0, number: int = 0) -> int:
    return sink.write_batch(frame, run_id=run, shard=shard, batch=number)


# -- dispositions ------------------------------------------------------------------------


def test_a_merge_of_batches_with_repeated_keys_equals_pandas_keep_last(place: Place) -> None:
    # Given batches whose keys repeat within and across batches, and an older run's batch
    sink = place.sink()
    frames = [batch({"id": [1, 2, 2, 3], "v": ["a", "b", "c", "d"]}, number=0),
              batch({"id": [3, 4, 1], "v": ["e", "f", "g"]}, number=1),
              batch({"id": [4, 5], "v": ["h", "i"]}, shard=1, number=0),
              batch({"id": [1, 6], "v": ["old", "old"]}, run=STAMP - 1, number=0)]
    # When they load, the older run's batch last
    written = [write(sink, f, run=f"r{i}", number=i) for i, f in enumerate(frames)]
    # Then each write counts the batch's rows, and the table is pandas' keep-last result
    assert written == [4, 3, 2, 2]
    assert_holds(sink, reference(frames, ["id"]), ["id"])


def test_the_same_batch_written_twice_counts_once_and_changes_nothing(place: Place) -> None:
    # Given a batch loaded, then a later batch that updates one of its keys
    sink = place.sink()
    first = batch({"id": [1, 2], "v": ["a", "b"]}, number=0)
    later = batch({"id": [2], "v": ["B"]}, number=1)
    write(sink, first, number=0)
    write(sink, later, number=1)
    # When the first batch is delivered again (a retry after the ledger entry was lost)
    assert write(sink, first, number=0) == 2
    # Then nothing changed: key 2 keeps the later value, and the ledger counts each batch once
    assert_holds(sink, reference([first, later], ["id"]), ["id"])
    assert place.loads() == [("r1", 0, 0, 2), ("r1", 0, 1, 1)]


def test_append_writes_every_row_once_even_when_a_batch_is_written_twice(place: Place) -> None:
    # Given an appending sink, When batches with repeated keys load, one of them twice
    sink = place.sink(write_disposition="append")
    frames = [batch({"id": [1, 1, 2], "v": ["a", "b", "c"]}, number=0),
              batch({"id": [2, 3], "v": ["d", "e"]}, number=1)]
    for number in (0, 1, 0):
        write(sink, frames[number], number=number)
    # Then every row is held exactly once, repeated keys included
    held = sink.read_all().sort_values(["id", "v"]).reset_index(drop=True)
    assert held.to_dict("list") == {"id": [1, 1, 2, 2, 3], "v": ["a", "b", "c", "d", "e"]}


def test_replace_drops_older_runs_rows_when_the_run_finishes(place: Place) -> None:
    # Given a finished run and a new run that loaded fewer rows
    sink = place.sink(write_disposition="replace")
    write(sink, batch({"id": [1, 2, 3], "v": ["a", "b", "c"]}, run=STAMP), run="r1")
    sink.finish_run("r1", first_seq=make_seq(STAMP, 0, 0, 0))
    new_stamp = STAMP + 60_000
    write(sink, batch({"id": [2, 4], "v": ["B", "D"]}, run=new_stamp), run="r2")
    assert len(sink.read_all()) == 5  # both runs' rows until the run finishes
    # When the new run finishes (twice: a redelivered finish step)
    for _ in range(2):
        sink.finish_run("r2", first_seq=make_seq(new_stamp, 0, 0, 0))
    # Then only its rows are left
    assert sorted(sink.read_all()["v"]) == ["B", "D"]
    # And a backfill appends instead: its finish keeps the others' rows
    backfill = sink.for_backfill()
    assert backfill.write_disposition == "append" and sink.write_disposition == "replace"
    write(backfill, batch({"id": [9], "v": ["Z"]}, run=STAMP), run="b1")
    backfill.finish_run("b1", first_seq=make_seq(STAMP, 0, 0, 0))
    assert sorted(sink.read_all()["v"]) == ["B", "D", "Z"]


def test_a_new_table_has_the_key_as_primary_key_and_the_sequence_column(place: Place) -> None:
    # Given no table, When a batch loads into a sink keyed on two columns
    sink = place.sink(key=["k1", "k2"])
    write(sink, batch({"k1": [1, 1], "k2": ["a", "b"], "v": [0.5, 1.5]}))
    # Then the table exists with the key as primary key and the sequence column
    inspector = sa.inspect(place.engine)
    assert inspector.get_pk_constraint(place.table)["constrained_columns"] == ["k1", "k2"]
    columns = {c["name"]: c for c in inspector.get_columns(place.table)}
    assert list(columns) == ["k1", "k2", "v", SEQ_COLUMN]
    assert not columns[SEQ_COLUMN]["nullable"]
    # And the ledger table is there too, with its primary key
    assert inspector.get_pk_constraint(place.ledger)["constrained_columns"] == [
        "sink_table", "run_id", "shard", "batch"]


def test_a_batch_with_a_new_column_adds_it(place: Place) -> None:
    # Given a table made from a first batch
    sink = place.sink()
    first = batch({"id": [1, 2], "v": ["a", "b"]}, number=0)
    write(sink, first, number=0)
    # When a later batch brings a new column (and updates key 2)
    later = batch({"id": [2, 3], "v": ["B", "c"], "extra": [20, 30]}, number=1)
    write(sink, later, number=1)
    # And a batch without it updates key 3 (a row of an older schema, delivered late)
    late = batch({"id": [3, 4], "v": ["C", "d"]}, number=2)
    write(sink, late, number=2)
    # Then the column was added; rows that never had it, or whose newest row lacks it, hold
    # NULL there, as in pandas' concat
    assert "extra" in [c["name"] for c in sa.inspect(place.engine).get_columns(place.table)]
    expected = reference([first, later, late], ["id"])
    assert expected["extra"].isna().tolist() == [True, False, True, True]  # ids 1, 2, 3, 4
    assert_holds(sink, expected, ["id"])


def test_a_table_and_ledger_dropped_while_in_use_are_made_again(place: Place) -> None:
    # Given a sink that loaded a batch, When someone drops its table and ledger
    sink = place.sink()
    write(sink, batch({"id": [1], "v": ["a"]}), number=0)
    place.execute(f"DROP TABLE {place.table}")
    place.execute(f"DROP TABLE {place.ledger}")
    # Then the next batch makes both again and loads
    assert write(sink, batch({"id": [2], "v": ["b"]}), number=1) == 1
    assert sink.read_all()["v"].tolist() == ["b"] and place.loads() == [("r1", 0, 1, 1)]


def test_values_round_trip_with_their_types(place: Place) -> None:
    # Given a batch of every kind, with nulls and awkward text
    texts = ['quote " and \'', "tab\there", "new\nline\r\n", "back\\slash \\N", "ünïcödé 漢字 🎉",
             "", "NULL", None]
    n = len(texts)
    frame = batch({
        "id": list(range(n)),
        "text": pd.array(texts, dtype="str"),
        "count": pd.array([1, None, -(2 ** 62), 2 ** 62, 0, None, 7, 8], dtype="Int64"),
        "ratio": [0.1, np.nan, 1e300, -2.5, 5e-324, float("inf"), 3.0, np.nan],
        "ok": pd.array([True, False, None, True, False, None, True, True], dtype="boolean"),
        "at": pd.to_datetime(["2024-03-10 01:59:59.123456", None, "1970-01-01", "2038-01-20 03:14:08",
                              "2000-02-29 12:00", "2024-11-03 03:30", None, "2025-06-30 23:59:59.999999"],
                             format="ISO8601").tz_localize("America/New_York"),
        "naive": pd.to_datetime(["2024-01-01 10:00:00.5", None] + ["2024-01-02"] * (n - 2), format="ISO8601"),
        "day": [date(1999, 12, 31), None, date(2024, 2, 29)] + [date(2000, 1, 1)] * (n - 3),
        "nested": [{"a": [1, 2]}, [1, "x"], None] + [{"k": "v"}] * (n - 3),
    })
    if place.url.startswith("mysql"):  # MariaDB's DOUBLE holds no infinity
        frame["ratio"] = frame["ratio"].replace(float("inf"), 9.5)
    # When it loads and is read back
    write(place.sink(), frame)
    held = place.sinks[0].read_all().sort_values("id").reset_index(drop=True)
    # Then every value is what went in: NULL for NaN/None/NaT, instants in UTC, nested as JSON
    expected = frame.drop(columns=SEQ_COLUMN).copy()
    expected["at"] = expected["at"].dt.tz_convert("UTC")
    expected["nested"] = ['{"a": [1, 2]}', '[1, "x"]', None] + ['{"k": "v"}'] * (n - 3)
    for column in expected.columns:
        got, want = held[column].tolist(), expected[column].tolist()
        assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in want], column
    assert str(held["at"].dtype) == "datetime64[us, UTC]"
    assert str(held["count"].dtype) == "Int64" and str(held["ok"].dtype) == "boolean"


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
@pytest.mark.parametrize("disposition", ["merge", "append"])
def test_a_value_the_column_cannot_hold_is_one_line_naming_table_and_column(
        kind: str, disposition: str, tmp_path: Path) -> None:
    # Given a table of our making whose column v holds three characters
    place = Place(url_of(kind, tmp_path))
    try:
        place.execute(f"CREATE TABLE {place.table} (id BIGINT NOT NULL PRIMARY KEY, "
                      f"v VARCHAR(3), {SEQ_COLUMN} CHAR(40) NOT NULL)")
        # When a batch brings a longer text
        with pytest.raises(BatchError) as caught:
            write(place.sink(write_disposition=disposition), batch({"id": [1, 2], "v": ["ok", "too long"]}))
        # Then the error is one line naming the table and the column, and nothing loaded
        message = str(caught.value)
        assert "\n" not in message and place.table in message and "column" in message, message
        assert ("column v:" in message) if kind == "postgresql" else ("'v'" in message), message
        assert place.loads() == []
    finally:
        place.drop()


# -- exactly once by transaction -----------------------------------------------------------


class CrashingSink(SqlSink):
    """Dies between loading the rows and recording the batch in the ledger, when told to;
    it first counts the rows its own transaction sees (they are loaded at that point)."""

    crash = True
    seen: int | None = None

    def _before_ledger(self, connection: Any) -> None:
        self.seen = connection.exec_driver_sql(f"SELECT COUNT(*) FROM {self.table_name}").scalar()
        if self.crash:
            raise RuntimeError("killed between the rows and the ledger")


def test_a_crash_between_rows_and_ledger_leaves_neither_and_the_retry_loads_once(place: Place) -> None:
    # Given a table holding batch 0
    sink = CrashingSink(place.url, table=place.table, key=["id"], ledger_table=place.ledger)
    place.sinks.append(sink)
    sink.crash = False
    write(sink, batch({"id": [1, 2], "v": ["a", "b"]}, number=0), number=0)
    # When batch 1 is loaded and the process dies before the ledger row is inserted
    sink.crash = True
    second = batch({"id": [2, 3, 4], "v": ["B", "c", "d"]}, number=1)
    with pytest.raises(RuntimeError, match="killed"):
        write(sink, second, number=1)
    # Then the rows were in the table inside the transaction, and are gone with it: neither
    # the rows nor the ledger entry were committed
    assert sink.seen == 4
    assert sorted(sink.read_all()["v"]) == ["a", "b"]
    assert place.loads() == [("r1", 0, 0, 2)]
    # When the batch is delivered again, twice
    sink.crash = False
    assert [write(sink, second, number=1) for _ in range(2)] == [3, 3]
    # Then it loaded once
    assert sorted(sink.read_all()["v"]) == ["B", "a", "c", "d"]
    assert place.loads() == [("r1", 0, 0, 2), ("r1", 0, 1, 3)]


def test_a_row_refused_half_way_leaves_neither_rows_nor_ledger(place: Place) -> None:
    # Given a table of our making that refuses the value "bad"
    place.execute(f"CREATE TABLE {place.table} (id BIGINT NOT NULL PRIMARY KEY, "
                  f"v VARCHAR(20) CHECK (v <> 'bad'), {SEQ_COLUMN} CHAR(40) NOT NULL)")
    sink = place.sink()
    # When a batch whose third row is refused loads
    refused = batch({"id": [1, 2, 3, 4], "v": ["a", "b", "bad", "d"]})
    with pytest.raises(BatchError) as caught:
        write(sink, refused)
    # Then it is a one-line BatchError naming the table, and nothing of it was kept
    assert "\n" not in str(caught.value) and place.table in str(caught.value)
    assert sink.read_all().empty and place.loads() == []
    # When the batch is mended and delivered again, Then it loads, once
    mended = refused.assign(v=["a", "b", "c", "d"])
    assert [write(sink, mended) for _ in range(2)] == [4, 4]
    assert sorted(sink.read_all()["v"]) == ["a", "b", "c", "d"]
    assert place.loads() == [("r1", 0, 0, 4)]


# -- the property: any order, any redelivery, several runs -----------------------------------


def frames_strategy() -> st.SearchStrategy[list[tuple[int, int, int, pd.DataFrame]]]:
    """Runs of batches: (run stamp, shard, batch number, frame) with few distinct keys."""
    row = st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(-3, 3)),
                    st.sampled_from(["x", "y", 'q"', "t\tn\n", None]))

    @st.composite
    def runs(draw: Any) -> list[tuple[int, int, int, pd.DataFrame]]:
        made = []
        for run in range(draw(st.integers(1, 3))):
            for shard in range(draw(st.integers(1, 2))):
                for number in range(draw(st.integers(1, 3))):
                    rows = draw(st.lists(row, min_size=0, max_size=6))
                    frame = batch({"id": [r[0] for r in rows],
                                   "n": pd.array([r[1] for r in rows], dtype="Int64"),
                                   "s": pd.array([r[2] for r in rows], dtype="str")},
                                  run=STAMP + run, shard=shard, number=number)
                    made.append((STAMP + run, shard, number, frame))
        return made

    return runs()


@pytest.mark.parametrize("kind", DATABASES)
@settings(max_examples=20, deadline=None)
@given(batches=frames_strategy(), data=st.data())
def test_any_order_and_any_redelivery_give_pandas_keep_last(kind: str, batches: list[Any],
                                                            data: st.DataObject) -> None:
    # Given batches of several runs, delivered in a random order, some of them twice
    again = data.draw(st.lists(st.sampled_from(range(len(batches))), max_size=3))
    deliveries = data.draw(st.permutations([*range(len(batches)), *again]))
    with tempfile.TemporaryDirectory() as directory:
        place = Place(url_of(kind, directory))
        try:
            sink = place.sink()
            # When they load
            for i in deliveries:
                stamp, shard, number, frame = batches[i]
                written = write(sink, frame, run=f"run{stamp}", shard=shard, number=number)
                assert written == len(frame)
            # Then the table is pandas' keep-last over every batch, each batch counted once
            expected = reference([b[3] for b in batches], ["id"])
            assert len(sink.read_all()) == len(expected)
            if len(expected):
                assert_holds(sink, expected, ["id"])
            assert len(place.loads()) == len(batches)
        finally:
            place.drop()


# -- two processes at once -----------------------------------------------------------------


def overlapping(number: int) -> pd.DataFrame:
    """Batch `number` of the race: 300 keys overlapping the next batch's by 200."""
    keys = list(range(number * 100, number * 100 + 300))
    return batch({"id": keys, "v": [f"b{number}k{k}" for k in keys]}, number=number)


def _race(url: str, table: str, ledger: str, numbers: list[int], start: Any, errors: Any) -> None:
    sink = SqlSink(url, table=table, key=["id"], ledger_table=ledger)
    start.wait()
    try:
        for number in numbers:
            sink.write_batch(overlapping(number), run_id="r1", shard=0, batch=number)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}")
    finally:
        sink.close()


def test_two_processes_merging_overlapping_batches_at_once(postgres_url: str) -> None:
    # Given two processes that load overlapping batches into one new table, several of them
    # the very same batch (a redelivery to a second worker), started at the same moment
    place = Place(postgres_url)
    context = multiprocessing.get_context("spawn")
    start, errors = context.Barrier(2), context.Queue()
    plans = [list(range(0, 12)), list(range(11, 3, -1)) + [12, 13]]
    workers = [context.Process(target=_race, args=(postgres_url, place.table, place.ledger, plan,
                                                   start, errors)) for plan in plans]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        # Then neither failed, no key is held twice, and the table is pandas' keep-last
        assert [w.exitcode for w in workers] == [0, 0]
        assert errors.empty(), errors.get()
        expected = reference([overlapping(n) for n in range(14)], ["id"])
        assert_holds(place.sink(), expected, ["id"])
        assert len(place.loads()) == 14
    finally:
        place.drop()


# -- mistakes: one clear line ---------------------------------------------------------------


def test_a_sink_is_a_sequenced_backfill_aware_sink_made_without_a_server() -> None:
    # Given a sink on a server that is not there (nothing is opened until it is used)
    sink = SqlSink("postgresql://etl:s3cret@127.0.0.1:1/shop", table="orders")
    # Then it is a Sink with the capabilities it declares, keyless until bound
    assert isinstance(sink, Sink) and isinstance(sink, BackfillAware) and isinstance(sink, Sequenced)
    assert sink.key == () and sink.write_disposition == "merge"
    bound = sink.with_key(["id"])
    assert bound.key == ("id",) and sink.key == () and bound.for_backfill() is bound
    assert SqlSink("sqlite:///x.db", table="t", write_disposition="append").for_backfill().write_disposition == "append"
    # And its password is masked wherever it is shown
    for shown in (repr(sink), sink.describe(), bound.describe()):
        assert "s3cret" not in shown and "***" in shown
    # And a server that refuses connections is a transient error (retried), not a BatchError
    with pytest.raises(Exception) as caught:
        bound.write_batch(batch({"id": [1]}), run_id="r1", shard=0, batch=0)
    assert not isinstance(caught.value, BatchError) and "s3cret" not in str(caught.value)


@pytest.mark.parametrize("options, message", [
    ({"write_disposition": "upsert"}, "write_disposition must be one of append, replace, merge"),
    ({"key": "id"}, "key must be a list of column names"),
    ({"ledger_table": "etl loads; drop"}, "ledger_table must be a plain name"),
    ({"table": ""}, "table must be a non-empty name"),
])
def test_bad_options_are_one_line_value_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SqlSink("sqlite:///x.db", **{"table": "t", **options})
    assert "\n" not in str(caught.value)


def test_urls_name_their_drivers_and_other_databases_are_refused() -> None:
    assert driver_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert driver_url("mysql://u@h/db") == "mysql+pymysql://u@h/db"
    assert driver_url("mariadb://u@h/db") == "mariadb+pymysql://u@h/db"
    assert driver_url("mysql+pymysql://u@h/db") == "mysql+pymysql://u@h/db"
    with pytest.raises(UnsupportedURL, match=r"not oracle://u:\*\*\*@h/db"):
        SqlSink("oracle://u:pw@h/db", table="t")


def test_a_missing_driver_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given psycopg cannot be imported, When a sink is used
    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)
    sink = SqlSink("postgresql://u@127.0.0.1:1/db", table="t", key=["id"])
    with pytest.raises(ConfigError) as caught:
        sink.write_batch(batch({"id": [1]}), run_id="r1", shard=0, batch=0)
    # Then the error says what to install, on one line
    assert str(caught.value) == "SqlSink needs psycopg 3: pip install 'dramatiq-etl[sql]'"


@pytest.mark.parametrize("kind", DATABASES)
def test_batch_mistakes_are_one_line_batch_errors(kind: str, tmp_path: Path) -> None:
    place = Place(url_of(kind, tmp_path))
    try:
        sink = place.sink()
        write(sink, batch({"id": [1], "v": [10]}))
        cases = [  # (batch, what the message must say)
            (pd.DataFrame({"id": [2], "v": [1]}), f"lacks the sequence column {SEQ_COLUMN}"),
            (batch({"v": [1]}), "lacks the key column(s) id"),
            (batch({"id": [None, 3], "v": [1, 2]}), "key column(s) id hold nulls"),
            (batch({"id": [2], "v": ["text"]}), f"column v of table {place.table} is integer, the batch's is text"),
            (batch({"id": [2], "v": [1.5]}), f"table {place.table}: column v is an integer column, "
                                             "the batch's values are not all whole numbers"),
        ]
        for number, (frame, message) in enumerate(cases, start=1):
            with pytest.raises(BatchError) as caught:
                write(sink, frame, number=number)
            assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
        # And floats that are whole numbers (pandas' integers with a missing value) load
        write(sink, batch({"id": [2, 3], "v": [7.0, np.nan]}), number=8)
        held = sink.read_all().sort_values("id")
        assert held["v"].tolist()[1:] == [7, pd.NA] and str(held["v"].dtype) == "Int64"
        keyless = SqlSink(place.url, table=place.table, ledger_table=place.ledger)
        with pytest.raises(BatchError, match="a merge needs a key"):
            write(keyless, batch({"id": [2]}), number=9)
        keyless.close()
        assert place.loads() == [("r1", 0, 0, 1), ("r1", 0, 8, 2)]
    finally:
        place.drop()


def test_a_database_that_does_not_answer_is_one_transient_line_without_the_password() -> None:
    from etl.core.errors import EtlError
    from etl.sinks.sql import DatabaseUnavailable
    from tests.contracts import sequenced

    # Given a sink on a port nothing listens on, with a password in its URL
    sink = SqlSink("postgresql://etl:hunter2@127.0.0.1:1/test", table="t", key=["id"])
    # When a batch is written
    with pytest.raises(DatabaseUnavailable) as caught:
        sink.write_batch(sequenced(pd.DataFrame({"id": [1]})), run_id="r", shard=0, batch=0)
    # Then it says so in one line naming the sink and batch, masked, and it is transient
    message = str(caught.value)
    assert "cannot reach the database" in message and "run r shard 0 batch 0" in message
    assert "\n" not in message and "hunter2" not in message
    assert not isinstance(caught.value, EtlError)
