"""How batches are encoded in Parquet: integers and times delta-encoded, the rest by
dictionary where it pays; raw payloads with pyarrow's defaults, byte for byte."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl.core.parquet import from_parquet_bytes, raw_parquet_bytes, to_parquet_bytes


def _batch(rows: int = 2_000) -> pd.DataFrame:
    frame = pd.DataFrame({
        "flight": pd.array([i % 700 if i % 9 else None for i in range(rows)], dtype="Int64"),
        "delay": [(i * 37) % 1000 - 50 for i in range(rows)],
        "carrier": pd.array(["UA", "AA", None, "DL"] * (rows // 4), dtype="string"),
        "ratio": [i / 7 for i in range(rows)],
        "flag": [i % 3 == 0 for i in range(rows)],
        "at": pd.date_range("2013-01-01", periods=rows, freq="min", tz="UTC"),
        "day": pd.Series(pd.date_range("2013-01-01", periods=rows, freq="D")).dt.date,
    })
    frame.loc[5, "at"] = pd.NaT
    return frame


def _encodings(data: bytes) -> dict[str, set[str]]:
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    return {meta.column(i).path_in_schema: set(meta.column(i).encodings)
            for i in range(meta.num_columns)}


def test_a_batch_stores_integers_and_times_delta_encoded_and_reads_back_the_same() -> None:
    # Given a batch of every kind of column, nulls included
    frame = _batch()
    # When it is written as Parquet bytes
    data = to_parquet_bytes(frame)
    # Then integer and time columns are DELTA_BINARY_PACKED, text is dictionary-encoded
    encodings = _encodings(data)
    for column in ("flight", "delay", "at", "day"):
        assert "DELTA_BINARY_PACKED" in encodings[column], (column, encodings[column])
    assert "RLE_DICTIONARY" in encodings["carrier"]
    assert not any("DELTA" in e for e in encodings["ratio"] | encodings["flag"])
    # And the frame reads back as it was, dtypes and nulls included
    pd.testing.assert_frame_equal(from_parquet_bytes(data), frame)


def test_a_raw_payload_keeps_pyarrows_default_encodings() -> None:
    # Given a fetched batch as Arrow
    table = pa.Table.from_pandas(_batch(), preserve_index=False)
    # When it is landed as a raw copy
    data = raw_parquet_bytes(table)
    # Then its bytes are exactly pyarrow's default Snappy file: a copy cut again from the
    # source, by any version of the toolkit, hashes the same
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    assert data == sink.getvalue().to_pybytes()
    assert not any("DELTA" in e for encodings in _encodings(data).values() for e in encodings)


def test_a_table_whose_column_names_repeat_is_still_written() -> None:
    # Given an Arrow table with one name twice (encodings are chosen by name)
    table = pa.table([pa.array([1, 2]), pa.array([3, 4])], names=["a", "a"])
    # When it is written
    data = to_parquet_bytes(table)
    # Then it is, with both columns
    assert pq.ParquetFile(pa.BufferReader(data)).metadata.num_columns == 2


def _statistics(data: bytes) -> set[bool]:
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    return {meta.column(i).is_stats_set for i in range(meta.num_columns)}


def test_a_plain_file_has_no_dictionaries_or_statistics_and_reads_back_the_same() -> None:
    # Given a small batch of every kind of column
    frame = _batch(rows=40)
    # When it is written plain
    data = to_parquet_bytes(frame, plain=True)
    # Then no column has a dictionary or min/max statistics
    assert not any("DICTIONARY" in e for encodings in _encodings(data).values() for e in encodings)
    assert _statistics(data) == {False}
    # And the frame reads back as it was, dtypes and nulls included
    pd.testing.assert_frame_equal(from_parquet_bytes(data), frame)


def test_a_small_quarantine_is_written_plain_and_a_large_one_keeps_its_dictionaries() -> None:
    from etl.runtime.quarantine import PLAIN_QUARANTINE_ROWS, ROW_COLUMN, quarantine_bytes

    def quarantined(rows: int) -> pd.DataFrame:
        return _batch(rows=rows).assign(**{ROW_COLUMN: pd.array(range(rows), dtype="Int64")})

    # Given a quarantine of a few dozen rows, and one of a whole batch
    small, large = quarantined(40), quarantined(PLAIN_QUARANTINE_ROWS)
    # When each is written
    small_data, large_data = quarantine_bytes(small), quarantine_bytes(large)
    # Then the small one is plain, without statistics
    assert not any("DICTIONARY" in e for e in set().union(*_encodings(small_data).values()))
    assert _statistics(small_data) == {False}
    # And the large one dictionary-encodes its text and keeps statistics
    assert "RLE_DICTIONARY" in _encodings(large_data)["carrier"]
    assert True in _statistics(large_data)
    # And both read back as they were (the row ordinal as a plain integer)
    for data, frame in ((small_data, small), (large_data, large)):
        back = from_parquet_bytes(data)
        assert back[ROW_COLUMN].tolist() == frame[ROW_COLUMN].tolist()
        pd.testing.assert_frame_equal(back.drop(columns=ROW_COLUMN), frame.drop(columns=ROW_COLUMN))
