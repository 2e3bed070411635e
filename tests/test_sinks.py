"""Sinks hold each batch once however often it is written; Parquet bytes round-trip dtypes."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.parquet import from_parquet_bytes, stringify_mixed, to_parquet_bytes
from etl.sinks import MongoSink, ParquetSink


def _batch(start: int, n: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"id": range(start, start + n), "v": [f"v{i}" for i in range(n)]})


def test_parquet_sink_same_batch_twice_is_held_once(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path / "ds"))
    for _ in range(2):
        assert sink.write_batch(_batch(0), run_id="r1", shard=0, batch=0) == 5
    assert sink.write_parquet(to_parquet_bytes(_batch(5)), run_id="r1", shard=0, batch=1) == 5
    assert sorted(sink.read_all()["id"]) == list(range(10))


def test_replace_keeps_only_the_finished_run_and_append_keeps_all(tmp_path: Path) -> None:
    # Given two runs written into one dataset
    for disposition in ("replace", "append"):
        sink = ParquetSink(str(tmp_path / disposition), write_disposition=disposition)
        sink.write_batch(_batch(0), run_id="old", shard=0, batch=0)
        sink.write_batch(_batch(0), run_id="new", shard=0, batch=0)
        # When the new run finishes
        sink.finish_run("new")
        # Then replace holds the new run once, append holds both
        files = sorted(p.name for p in (tmp_path / disposition).glob("*.parquet"))
        expected = ["part-new-00000-000000.parquet"] if disposition == "replace" else \
            ["part-new-00000-000000.parquet", "part-old-00000-000000.parquet"]
        assert files == expected
    with pytest.raises(ValueError, match="replace, append"):
        ParquetSink(str(tmp_path), write_disposition="merge")


@pytest.fixture
def mongo_sink(mongo_client, mongo_db_name: str):  # type: ignore[no-untyped-def]
    yield MongoSink("mongodb://etl:hunter2@db/x", collection="flights", key=["carrier", "flight"],
                    client=mongo_client, database=mongo_db_name)
    mongo_client.drop_database(mongo_db_name)


def test_mongo_sink_upserts_by_key(mongo_sink: MongoSink) -> None:
    # Given a batch, When written twice and then with one row changed
    frame = pd.DataFrame({"carrier": ["UA", "AA"], "flight": [1, 2], "delay": [3.0, np.nan]})
    mongo_sink.write_batch(frame, run_id="r", shard=0, batch=0)
    mongo_sink.write_batch(frame, run_id="r", shard=0, batch=0)
    mongo_sink.write_batch(frame.assign(delay=[9.0, 1.0]).head(1), run_id="r", shard=0, batch=1)
    # Then each key is held once, with the latest values, NaN as null, no _id
    held = mongo_sink.read_all().sort_values("carrier").reset_index(drop=True)
    assert held[["carrier", "flight"]].values.tolist() == [["AA", 2], ["UA", 1]]
    assert held.loc[1, "delay"] == 9.0 and pd.isna(held.loc[0, "delay"])
    assert "_id" not in held.columns


def test_mongo_sink_makes_field_names_safe_and_keeps_times(mongo_sink: MongoSink) -> None:
    when = pd.Timestamp("2013-01-01 10:15", tz="UTC")
    frame = pd.DataFrame({"carrier": ["UA"], "flight": pd.array([1], dtype="Int64"),
                          "$price": [1.5], "a.b": [pd.NA], "at": [when], "gone": [pd.NaT]})
    mongo_sink.write_batch(frame, run_id="r", shard=0, batch=0)
    doc = mongo_sink._coll().find_one({})
    assert "_price" in doc and "a_b" in doc and doc["a_b"] is None and doc["gone"] is None
    assert doc["at"].replace(tzinfo=timezone.utc) == datetime(2013, 1, 1, 10, 15, tzinfo=timezone.utc)
    assert "hunter2" not in mongo_sink.describe()


def test_parquet_bytes_round_trip_keeps_dtypes() -> None:
    frame = pd.DataFrame({
        "i": pd.array([1, None, 3], dtype="Int64"),
        "s": pd.array(["a", None, "c"], dtype="string"),
        "t": pd.to_datetime(["2013-01-01T10:00Z", None, "2013-01-02T00:00Z"], utc=True),
    })
    back = from_parquet_bytes(to_parquet_bytes(frame))
    assert str(back["i"].dtype) == "Int64" and back["i"].isna().tolist() == [False, True, False]
    assert back["s"].tolist()[0] == "a" and pd.isna(back["s"].iloc[1])
    assert back["t"].dt.tz is not None and back["t"].iloc[2] == pd.Timestamp("2013-01-02", tz="UTC")


def test_mixed_object_columns_are_stringified_so_they_can_be_stored() -> None:
    frame = pd.DataFrame({"mixed": pd.Series([1, "two", 3.5, None], dtype=object), "n": [1, 2, 3, 4]})
    with pytest.raises(Exception):
        to_parquet_bytes(frame)
    back = from_parquet_bytes(to_parquet_bytes(stringify_mixed(frame)))
    assert back["mixed"].tolist()[:3] == ["1", "two", "3.5"] and pd.isna(back["mixed"].iloc[3])
    assert back["n"].tolist() == [1, 2, 3, 4]
