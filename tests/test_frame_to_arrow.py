"""pandas batches as Arrow (etl.core.arrow): the schema cache must give the very table
`pa.Table.from_pandas` gives (types, nulls, pandas metadata, Parquet bytes), batch after
batch, and fall back to it whenever it cannot be sure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from etl.core import arrow
from etl.core.arrow import frame_to_arrow
from etl.core.parquet import from_parquet_bytes, to_parquet_bytes


def _batch(rows: int, seed: int) -> pd.DataFrame:
    """A batch of every kind of column a run carries, nulls included."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(0, 1000, rows)
    floats = rng.random(rows)
    floats[::7] = np.nan
    nullable = pd.array(ints, dtype="Int64")
    nullable[::5] = pd.NA
    stamps = pd.Series(pd.date_range("2013-01-01", periods=rows, freq="h", tz="America/New_York"))
    stamps[::11] = pd.NaT
    return pd.DataFrame({
        "id": ints,
        "ratio": floats,
        "flag": ints % 2 == 0,
        "count": nullable,
        "code": pd.Series([f"c{n % 13}" for n in ints], dtype="string").mask(ints % 9 == 0),
        "name": pd.Series([f"n{n}" for n in ints], dtype="str"),
        "at": stamps.dt.tz_convert("UTC"),
        "zoned": stamps,
        "millis": stamps.dt.tz_convert("UTC").astype("datetime64[ms, UTC]"),
        "local": pd.Series(pd.date_range("2020-01-01", periods=rows, freq="min")),
        "took": pd.to_timedelta(ints, unit="s"),
        "kind": pd.Categorical([("a", "b", "c")[n % 3] for n in ints], categories=["a", "b", "c"]),
        "ok": pd.array(ints % 3 == 0, dtype="boolean"),
        "small": (ints % 100).astype("int16"),
    })


def test_batches_of_a_known_schema_come_out_as_from_pandas_makes_them() -> None:
    # Given batches with the same columns and dtypes (the first one seeds the cache)
    arrow._SCHEMAS.clear()
    for seed, rows in enumerate((50, 1_000, 0, 3)):
        frame = _batch(rows, seed)
        expected = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
        # When each is converted
        table = frame_to_arrow(frame)
        # Then it equals from_pandas' table: values, types, the pandas metadata and the file
        assert table.equals(expected)
        assert table.schema.equals(expected.schema, check_metadata=True)
        assert to_parquet_bytes(frame) == _parquet(expected)
    assert len(arrow._SCHEMAS) == 1  # one schema, seen once and reused
    (schema,) = arrow._SCHEMAS.values()  # and used: the cached path converts every column
    converted = arrow._convert(frame, arrow._column_arrays(frame), schema)
    assert converted is not None and converted.equals(expected)
    # time-zone-aware columns from their UTC values, without a Series each
    for name in ("at", "zoned", "millis"):
        assert arrow._utc_values(frame[name].array, schema.field(name).type) is not None
    assert arrow._utc_values(frame["local"].array, schema.field("local").type) is None


def test_a_batch_reads_back_with_its_pandas_dtypes() -> None:
    # Given a batch converted through the cache (its second of the schema)
    arrow._SCHEMAS.clear()
    to_parquet_bytes(_batch(10, 1))
    frame = _batch(200, 2)
    # When it is written and read back, Then the dtypes and values are the ones it had
    pd.testing.assert_frame_equal(from_parquet_bytes(to_parquet_bytes(frame)), frame)


def test_a_cached_schema_that_does_not_fit_is_not_used() -> None:
    # Given a cached schema that says another type for a column of the batch's signature
    arrow._SCHEMAS.clear()
    frame = _batch(20, 3)
    frame_to_arrow(frame)
    (key, schema), = arrow._SCHEMAS.items()
    position = schema.get_field_index("id")
    arrow._SCHEMAS[key] = schema.set(position, pa.field("id", pa.int32()))
    # When the batch is converted, Then it is from_pandas' table, int64 and all
    table = frame_to_arrow(frame)
    assert table.schema.field("id").type == pa.int64()
    assert table.equals(pa.Table.from_pandas(frame, preserve_index=False))


@pytest.mark.parametrize("frame", [
    pd.DataFrame({"mixed": [1, "a", None], "n": [1, 2, 3]}),
    pd.DataFrame({"text": ["x", None, "z"]}, dtype=object),
    pd.DataFrame([[1, 2]], columns=[0, 1]),
    pd.DataFrame({"a": [1], "b": [2]}).set_axis(pd.MultiIndex.from_tuples([("x", "a"), ("x", "b")]),
                                                axis=1),
], ids=["mixed-object", "object-text", "int-labels", "multiindex-labels"])
def test_frames_whose_values_or_labels_decide_the_schema_go_through_from_pandas(
        frame: pd.DataFrame) -> None:
    # Given a frame whose Arrow schema is not fixed by its dtypes alone, converted twice
    arrow._SCHEMAS.clear()
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(frame_to_arrow(frame))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            outcomes.append(type(exc))
    # Then each time the outcome is from_pandas' own (its table, or its error), uncached
    try:
        expected: object = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        expected = type(exc)
    for outcome in outcomes:
        if isinstance(expected, pa.Table):
            assert isinstance(outcome, pa.Table) and outcome.equals(expected)
            assert outcome.schema.equals(expected.schema, check_metadata=True)
        else:
            assert outcome is expected
    assert not arrow._SCHEMAS


def test_repeated_names_and_attrs_are_left_to_from_pandas() -> None:
    # Given a frame with a repeated column name, and one with attrs
    repeated = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with_attrs = pd.DataFrame({"a": [1, 2]})
    with_attrs.attrs["source"] = "orders"
    arrow._SCHEMAS.clear()
    # When converted, Then from_pandas refuses the first as it always has
    for _ in range(2):
        with pytest.raises(ValueError, match="Duplicate column names"):
            frame_to_arrow(repeated)
    # And the second keeps its attrs in the metadata, batch after batch
    for _ in range(2):
        table = frame_to_arrow(with_attrs)
        assert table.schema.equals(pa.Table.from_pandas(with_attrs, preserve_index=False).schema,
                                   check_metadata=True)
        assert b"orders" in table.schema.metadata[b"pandas"]


def test_the_cache_stays_bounded() -> None:
    # Given more schemas than the cache holds
    arrow._SCHEMAS.clear()
    for n in range(arrow._MAX_SCHEMAS + 10):
        frame_to_arrow(pd.DataFrame({f"c{n}": [1, 2]}))
    # Then it keeps at most its bound, the newest among them
    assert len(arrow._SCHEMAS) == arrow._MAX_SCHEMAS
    assert any(key[0] == (f"c{arrow._MAX_SCHEMAS + 9}",) for key in arrow._SCHEMAS)


def _parquet(table: pa.Table) -> bytes:
    return to_parquet_bytes(table)  # the same encode, from from_pandas' table


def test_threads_converting_side_by_side_share_the_cache_safely() -> None:
    # Given four threads converting frames of more schemas than the cache holds, at once
    from concurrent.futures import ThreadPoolExecutor

    arrow._SCHEMAS.clear()
    frames = [pd.DataFrame({f"c{n % 150}": np.arange(n % 7 + 1), "v": 1.5}) for n in range(600)]

    def convert(frame: pd.DataFrame) -> bool:
        return frame_to_arrow(frame).equals(pa.Table.from_pandas(frame, preserve_index=False))

    # When they convert them, Then every table is from_pandas' and the cache kept its bound
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(convert, frames))
    assert len(arrow._SCHEMAS) <= arrow._MAX_SCHEMAS
