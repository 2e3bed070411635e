"""Sinks hold each batch once however often it is written; Parquet bytes round-trip dtypes."""

from __future__ import annotations

import os
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from etl.core.errors import BatchError
from etl.core.parquet import from_parquet_bytes, stringify_mixed, to_parquet_bytes
from etl.sinks.base import Sink
from etl.sinks.mongo import MongoSink
from etl.sinks.parquet import ParquetSink
from tests.contracts import sequenced


def _batch(start: int, n: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"id": range(start, start + n), "v": [f"v{i}" for i in range(start, start + n)]})


def _parts(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.parquet"))


# --- ParquetSink -------------------------------------------------------------------------


def test_parquet_sink_same_batch_twice_is_held_once(tmp_path: Path) -> None:
    # Given a sink, When batch 0 is written twice (a redelivery) and batch 1 as Parquet bytes
    sink = ParquetSink(f"file://{tmp_path}/ds")
    assert isinstance(sink, Sink) and "ds" in sink.describe()
    for _ in range(2):
        assert sink.write_batch(_batch(0), run_id="r1", shard=0, batch=0) == 5
    assert sink.write_parquet(to_parquet_bytes(_batch(5)), run_id="r1", shard=0, batch=1) == 5
    # Then each row is held once, one deterministic file per batch, no temp file left
    held = sink.read_all()
    assert sorted(held["id"]) == list(range(10)) and sorted(held["v"]) == sorted(f"v{i}" for i in range(10))
    assert _parts(tmp_path / "ds") == ["part-r1-00000-000000.parquet", "part-r1-00000-000001.parquet"]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == _parts(tmp_path / "ds")


def test_a_parquet_writer_told_the_rows_of_its_clean_writes_the_same_and_returns_them(
        tmp_path: Path) -> None:
    # Given an embedded run into a Parquet sink that notes the rows it is told
    import pyarrow.parquet as pq

    import etl
    from etl.pipeline import Pipeline
    from etl.sources.files import FileSource
    from etl.stores import Stores
    from etl.stores.objects import open_objects
    from etl.stores.state import open_state
    from shards import HashShards
    from stages import DropRows

    told: list[int | None] = []

    class Noting(ParquetSink):
        def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int,
                          rows: int | None = None) -> int:
            told.append(rows)
            return super().write_parquet(data, run_id=run_id, shard=shard, batch=batch, rows=rows)

    _batch(0, 3000).to_parquet(tmp_path / "src.parquet")
    sink = Noting(str(tmp_path / "out"))
    pipeline = Pipeline(name="told", source=FileSource(str(tmp_path / "src.parquet")), sink=sink,
                        key=["id"], shards=HashShards("id", 3), batch_size=400,
                        stages=[DropRows("id % 7 == 0", reason="sevens")])
    stores = Stores(open_state(f"sqlite:///{tmp_path}/state.db"),
                    open_objects(f"file://{tmp_path}/objects"))
    # When it runs
    outcome = etl.run(pipeline, spec="tests:unused", stores=stores, processes=1)
    # Then each load was told its clean's count, which is what its file holds, and the run
    # counts the rows the files hold
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert outcome.completed and len(told) == len(files) > 3 and None not in told
    assert sorted(told) == sorted(pq.read_metadata(f).num_rows for f in files)
    assert outcome.rows_loaded == sum(told) == 3000 - len(range(0, 3000, 7))


def test_rows_are_offered_only_to_a_write_parquet_that_takes_them(tmp_path: Path) -> None:
    # Given two Parquet sinks of one class, one with its method replaced by an older one
    from etl.sinks.base import takes_rows

    plain, replaced = ParquetSink(str(tmp_path / "a")), ParquetSink(str(tmp_path / "b"))
    original = replaced.write_parquet
    replaced.write_parquet = lambda data, *, run_id, shard, batch: original(  # type: ignore[method-assign]
        data, run_id=run_id, shard=shard, batch=batch)
    # When each is asked (the class first), Then each answers for its own method
    assert takes_rows(plain) and not takes_rows(replaced) and takes_rows(plain)


def test_replace_keeps_only_the_finished_run_and_append_keeps_all(tmp_path: Path) -> None:
    for disposition in ("replace", "append"):
        # Given two runs written into one dataset
        sink = ParquetSink(str(tmp_path / disposition), write_disposition=disposition)
        sink.write_batch(_batch(0), run_id="old", shard=0, batch=0)
        sink.write_batch(_batch(0), run_id="new", shard=3, batch=0)
        assert len(sink.read_all()) == 10  # before the end, both runs are visible
        # When the new run finishes
        sink.finish_run("new")
        # Then replace holds the new run once, append holds both
        expected = ["part-new-00003-000000.parquet"] if disposition == "replace" else \
            ["part-new-00003-000000.parquet", "part-old-00000-000000.parquet"]
        assert _parts(tmp_path / disposition) == expected
        assert len(sink.read_all()) == (5 if disposition == "replace" else 10)


def test_replace_tells_runs_apart_when_one_id_begins_another(tmp_path: Path) -> None:
    # Given runs "daily" and "daily-2" (one id is a prefix of the other)
    sink = ParquetSink(str(tmp_path))
    sink.write_batch(_batch(0), run_id="daily", shard=0, batch=0)
    sink.write_batch(_batch(0), run_id="daily-2", shard=0, batch=0)
    # When "daily" finishes, Then the file of "daily-2" is swept, its own file stays
    sink.finish_run("daily")
    assert _parts(tmp_path) == ["part-daily-00000-000000.parquet"]


def test_finish_run_sweeps_stale_temp_files_only(tmp_path: Path) -> None:
    # Given a temp file a killed writer left an hour ago, and one being written right now
    sink = ParquetSink(str(tmp_path), write_disposition="append")
    sink.write_batch(_batch(0), run_id="r", shard=0, batch=0)
    stale, fresh = tmp_path / ".tmp-stale", tmp_path / ".tmp-fresh"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    # When the run finishes, Then only the stale one is removed; read_all never saw either
    assert len(sink.read_all()) == 5
    sink.finish_run("r")
    assert not stale.exists() and fresh.exists()


def test_parquet_sink_edges(tmp_path: Path) -> None:
    # An empty or absent dataset reads as an empty frame; finishing it is harmless
    sink = ParquetSink(str(tmp_path / "none"))
    assert sink.read_all().empty
    sink.finish_run("r")
    # A run id that would leave the directory is refused
    with pytest.raises(ValueError, match="cannot name a part file"):
        sink.write_batch(_batch(0), run_id="../x", shard=0, batch=0)
    # An unknown disposition is refused, listing the valid ones
    with pytest.raises(ValueError, match="replace, append"):
        ParquetSink(str(tmp_path), write_disposition="merge")


# --- MongoSink (mongomock, or a real server when ETL_TEST_MONGO_URL is set) ----------------


@pytest.fixture
def mongo_sink(mongo_client, mongo_db_name: str):  # type: ignore[no-untyped-def]
    yield MongoSink("mongodb://etl:hunter2@db/x", collection="flights", key=["carrier", "flight"],
                    client=mongo_client, database=mongo_db_name)
    mongo_client.drop_database(mongo_db_name)


def test_mongo_sink_upserts_by_key(mongo_sink: MongoSink) -> None:
    # Given a batch, When written twice and then with one row changed
    frame = pd.DataFrame({"carrier": ["UA", "AA"], "flight": [1, 2], "delay": [3.0, np.nan]})
    assert mongo_sink.write_batch(sequenced(frame, shard=0, batch=0), run_id="r", shard=0, batch=0) == 2
    mongo_sink.write_batch(sequenced(frame, shard=0, batch=0), run_id="r", shard=0, batch=0)
    mongo_sink.write_batch(sequenced(frame.assign(delay=[9.0, 1.0]).head(1), shard=0, batch=1), run_id="r", shard=0, batch=1)
    # Then each key is held once, with the latest values, NaN as null, no _id
    held = mongo_sink.read_all().sort_values("carrier").reset_index(drop=True)
    assert held[["carrier", "flight"]].values.tolist() == [["AA", 2], ["UA", 1]]
    assert held.loc[1, "delay"] == 9.0 and pd.isna(held.loc[0, "delay"])
    assert "_id" not in held.columns
    assert mongo_sink._coll().find_one({"carrier": "AA"})["delay"] is None
    # And a unique index on the key guards against a second copy
    index = mongo_sink._coll().index_information()["etl_key"]
    assert index["key"] == [("carrier", 1), ("flight", 1)] and index["unique"]


def test_mongo_sink_chunks_and_last_row_wins_within_a_batch(  # type: ignore[no-untyped-def]
        mongo_client, mongo_db_name: str) -> None:
    # Given a sink writing in chunks of 2, and a batch of 5 rows where one key repeats
    sink = MongoSink("mongodb://db", collection="c", key=["id"], client=mongo_client,
                     database=mongo_db_name, chunk=2)
    try:
        frame = pd.DataFrame({"id": [1, 2, 3, 1, 4], "v": ["a", "b", "c", "a2", "d"]})
        sink.write_batch(sequenced(frame, shard=0, batch=0), run_id="r", shard=0, batch=0)
        # Then every key is held once, the repeated one with its last value
        held = sink.read_all().sort_values("id")
        assert held["id"].tolist() == [1, 2, 3, 4] and held["v"].tolist() == ["a2", "b", "c", "d"]
    finally:
        mongo_client.drop_database(mongo_db_name)


def test_mongo_sink_makes_field_names_safe_and_keeps_values(mongo_sink: MongoSink) -> None:
    # Given awkward field names and values pandas and numpy produce
    when = pd.Timestamp("2013-01-01 10:15", tz="UTC")
    frame = pd.DataFrame({"carrier": ["UA"], "flight": pd.array([1], dtype="Int64"),
                          "$price": [1.5], "a.b": [pd.NA], "at": [when], "gone": [pd.NaT],
                          "n": [np.int64(7)], "ok": [np.bool_(True)], "day": [date(2013, 1, 2)],
                          "tags": [np.array(["x", "y"])]})
    # When written
    mongo_sink.write_batch(sequenced(frame, shard=0, batch=0), run_id="r", shard=0, batch=0)
    doc = mongo_sink._coll().find_one({})
    # Then names are safe, missing values are null, scalars are plain, times round trip
    assert {"_price", "a_b"} <= set(doc) and not any("$" in k or "." in k for k in doc)
    assert doc["a_b"] is None and doc["gone"] is None and doc["_price"] == 1.5
    assert doc["flight"] == 1 and doc["n"] == 7 and doc["ok"] is True and doc["tags"] == ["x", "y"]
    assert doc["at"].replace(tzinfo=timezone.utc) == datetime(2013, 1, 1, 10, 15, tzinfo=timezone.utc)
    assert doc["day"].replace(tzinfo=None) == datetime(2013, 1, 2)
    assert "hunter2" not in mongo_sink.describe() and "hunter2" not in repr(mongo_sink)


def test_mongo_sink_makes_nested_keys_of_api_payloads_safe(mongo_sink: MongoSink) -> None:
    # Given a payload column with "$" and "." in nested keys, one of them colliding
    payload = {"$set": 1, "geo.lat": 40.6, "geo_lat": 0, "items": [{"sku.id": "a"}]}
    frame = pd.DataFrame({"carrier": ["UA"], "flight": [1], "payload": [payload]})
    # When loaded
    mongo_sink.write_batch(sequenced(frame, shard=0, batch=0), run_id="r", shard=0, batch=0)
    doc = mongo_sink._coll().find_one({})["payload"]
    # Then every key is safe at every depth, no value is lost, safe keys keep their names
    assert doc == {"_set": 1, "geo_lat_2": 40.6, "geo_lat": 0, "items": [{"sku_id": "a"}]}


def test_mongo_sink_refuses_batches_without_the_key(mongo_sink: MongoSink) -> None:
    # A batch lacking a key column would upsert every row onto one document: refused, as a
    # permanent BatchError (retrying cannot help)
    with pytest.raises(BatchError, match="run r shard 0 batch 0: .*flight"):
        mongo_sink.write_batch(sequenced(pd.DataFrame({"carrier": ["UA"]}), shard=0, batch=0), run_id="r", shard=0, batch=0)
    assert mongo_sink.read_all().empty
    # And a key given as one string, not a list, is refused when the sink is built
    with pytest.raises(ValueError, match="key must be a list"):
        MongoSink("mongodb://db/x", collection="c", key="id")
    # And a sink with no key (not bound to a pipeline) refuses to write, naming the fix
    unbound = MongoSink("mongodb://db/x", collection="c", client=mongo_sink._client,
                        database=mongo_sink.database)
    with pytest.raises(BatchError, match="MongoSink has no key"):
        unbound.write_batch(sequenced(_batch(0)), run_id="r", shard=0, batch=0)


def test_mongo_sink_opens_a_mongomock_url() -> None:
    pytest.importorskip("mongomock")
    from tests.conftest import _mongomock_accepts_new_pymongo

    _mongomock_accepts_new_pymongo()
    # Given a mongomock:// URL naming the database, When a batch is written
    sink = MongoSink("mongomock://localhost/shop", collection="orders", key=["id"])
    sink.write_batch(sequenced(_batch(0, 3), shard=0, batch=0), run_id="r", shard=0, batch=0)
    # Then it lands in that database
    assert sink.database == "shop" and sorted(sink.read_all()["id"]) == [0, 1, 2]
    assert "shop.orders" in sink.describe()


# --- Parquet bytes -----------------------------------------------------------------------


def test_parquet_bytes_round_trip_keeps_dtypes() -> None:
    # Given nullable ints, strings, tz-aware times, booleans and floats with gaps
    frame = pd.DataFrame({
        "i": pd.array([1, None, 3], dtype="Int64"),
        "s": pd.array(["a", None, "c"], dtype="string"),
        "t": pd.to_datetime(["2013-01-01T10:00Z", None, "2013-01-02T00:00Z"], utc=True),
        "local": pd.to_datetime(["2013-01-01", "2013-01-02", None]).tz_localize("Europe/Paris"),
        "b": pd.array([True, None, False], dtype="boolean"),
        "f": [1.5, np.nan, 2.0],
    })
    # When round-tripped through Parquet bytes
    data = to_parquet_bytes(frame)
    back = from_parquet_bytes(data)
    # Then dtypes and values survive, and the bytes are a snappy Parquet file without index
    assert data[:4] == b"PAR1" and list(back.columns) == list(frame.columns)
    assert back.dtypes.astype(str).tolist() == frame.dtypes.astype(str).tolist()
    pd.testing.assert_frame_equal(back, frame)
    import pyarrow.parquet as pq

    meta = pq.read_metadata(pa.BufferReader(data))
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_arrow_tables_are_written_as_they_are() -> None:
    table = pa.table({"id": [1, 2], "v": ["a", None]})
    back = from_parquet_bytes(to_parquet_bytes(table))
    assert back["id"].tolist() == [1, 2] and back["v"].tolist()[0] == "a" and pd.isna(back["v"].iloc[1])


def test_mixed_object_columns_are_stringified_so_they_can_be_stored() -> None:
    # Given a quarantine-like frame: one column mixing ints, text, floats and a gap
    frame = pd.DataFrame({"mixed": pd.Series([1, "two", 3.5, None], dtype=object), "n": [1, 2, 3, 4]})
    with pytest.raises(Exception):
        to_parquet_bytes(frame)
    # When stringified, Then it can be stored; the gap stays missing, other columns untouched
    safe = stringify_mixed(frame)
    assert str(safe["mixed"].dtype) == "string" and safe["n"].dtype == frame["n"].dtype
    assert frame["mixed"].dtype == object  # the input is not modified
    back = from_parquet_bytes(to_parquet_bytes(safe))
    assert back["mixed"].tolist()[:3] == ["1", "two", "3.5"] and pd.isna(back["mixed"].iloc[3])
    assert back["n"].tolist() == [1, 2, 3, 4]


def test_stringify_mixed_leaves_storable_columns_alone() -> None:
    # Given object columns of one kind each (and ints with floats, which Arrow types as double)
    frame = pd.DataFrame({"dicts": pd.Series([{"a": 1}, {"a": 2}], dtype=object),
                          "nums": pd.Series([1, 2.5], dtype=object), "s": ["x", "y"]})
    # Then nothing changes: the very same frame comes back
    assert stringify_mixed(frame) is frame
    # And repeated column names do not confuse it
    twice = pd.concat([pd.Series([1, "a"], dtype=object, name="c")] * 2, axis=1)
    assert [str(t) for t in stringify_mixed(twice).dtypes] == ["string", "string"]


# --- bugs found in review, now fixed ------------------------------------------------------


def test_mongo_sink_does_not_lose_a_column_whose_safe_name_collides(mongo_sink: MongoSink) -> None:
    # Given two columns whose safe field names are equal
    frame = pd.DataFrame({"carrier": ["UA"], "flight": [1], "a.b": [101], "a_b": [202]})
    # When written, Then it is refused as a permanent batch error, or both values are kept
    try:
        mongo_sink.write_batch(sequenced(frame, shard=0, batch=0), run_id="r", shard=0, batch=0)
    except (BatchError, ValueError):
        return
    doc = mongo_sink._coll().find_one({}, {"_id": 0})
    assert {101, 202} <= set(doc.values())


def test_mongo_sink_describe_hides_an_aws_session_token(mongo_client, mongo_db_name: str) -> None:  # type: ignore[no-untyped-def]
    # Given a MongoDB URL using AWS auth with a session token in the query
    url = ("mongodb://db/x?authMechanism=MONGODB-AWS"
           "&authMechanismProperties=AWS_SESSION_TOKEN:SeSsIoNtOkEn123")
    sink = MongoSink(url, collection="c", key=["id"], client=mongo_client, database=mongo_db_name)
    # Then neither describe() nor repr() shows the token
    assert "SeSsIoNtOkEn123" not in sink.describe() and "SeSsIoNtOkEn123" not in repr(sink)


@pytest.mark.parametrize("values", [[date(2020, 1, 1), datetime(2020, 1, 2, 15, 30)],
                                    [datetime(2020, 1, 2, 15, 30), date(2020, 1, 1)]],
                         ids=["date-first", "datetime-first"])
def test_stringify_mixed_keeps_the_time_of_a_date_datetime_mix(values: list) -> None:  # type: ignore[type-arg]
    # Given an object column mixing dates and datetimes (as bad input rows do)
    frame = pd.DataFrame({"c": pd.Series(values, dtype=object)})
    # When stringified and stored, Then it can be stored and 15:30 is not lost
    back = from_parquet_bytes(to_parquet_bytes(stringify_mixed(frame)))
    assert any("15:30" in str(v) for v in back["c"].tolist())
