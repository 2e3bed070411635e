"""How a batch's values travel to a SQL table and back, the same way for every database.

A batch is turned into a pyarrow table of a few plain kinds, one per column: "integer",
"float", "boolean", "timestamptz" (an instant, microseconds in UTC), "timestamp" (naive),
"date", "text" and "null" (nothing but missing values yet). Every missing value (None, NaN,
NaT, pd.NA) is a null there, nested values (lists, dicts) are JSON text, and a column of
mixed Python objects is text. The kinds decide the column types of a new table (a dialect
maps them) and are checked against an existing table's before anything is loaded, so a type
mismatch is one clear line naming the column instead of a driver's error half-way through.

pyarrow writes the CSV that PostgreSQL's COPY and MariaDB's LOAD DATA read: it is written
in C++, several times faster than handing the driver one Python tuple per row.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

KINDS = ("integer", "float", "boolean", "timestamptz", "timestamp", "date", "text", "null")

#: Kinds a column of the table's kind (key) takes from a batch: text takes anything (as
#: text), a float column integers, an integer column floats holding whole numbers (pandas
#: makes an integer column with a missing value float64: see `conform`), a timestamp column
#: dates and the other timestamp kind (a naive time is UTC); a column with nothing but
#: nulls in the batch fits any column.
ACCEPTS = {"text": set(KINDS), "float": {"float", "integer"}, "integer": {"integer", "float"},
           "timestamptz": {"timestamptz", "timestamp", "date"},
           "timestamp": {"timestamp", "timestamptz", "date"}}


def kind_of(arrow_type: pa.DataType) -> str:
    """The kind of a normalised arrow column type."""
    t = pa.types
    checks = ((t.is_boolean, "boolean"), (t.is_integer, "integer"), (t.is_floating, "float"),
              (t.is_date, "date"), (t.is_null, "null"))
    for check, kind in checks:
        if check(arrow_type):
            return kind
    if t.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    return "text"


def fits(table_kind: str, batch_kind: str) -> bool:
    """Whether a batch column of `batch_kind` may load into a column of `table_kind`."""
    return batch_kind in ("null", table_kind) or batch_kind in ACCEPTS.get(table_kind, ())


def _json(value: Any) -> str:
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        return str(v)

    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value,
                      default=plain, ensure_ascii=False)


def _objects(series: pd.Series) -> pd.Series:
    """An object column made something arrow reads in one go: nested values as JSON text,
    datetimes as a datetime column, missing values as None."""
    missing = series.isna().to_numpy()
    present = series.to_numpy(dtype=object)[~missing]
    values = series.astype(object).where(~missing, None)
    if not len(present):
        return values
    types = {type(v) for v in present}
    if any(issubclass(t, (dict, list, tuple, set, np.ndarray)) for t in types):
        return values.map(lambda v: None if v is None
                          else _json(sorted(v, key=str) if isinstance(v, set) else v))
    if all(issubclass(t, datetime) for t in types):
        aware = {v.tzinfo is not None for v in present}
        if len(aware) == 1:
            return pd.to_datetime(values, utc=aware == {True})
        return values.map(lambda v: None if v is None else v.isoformat())
    return values


def _normalised(name: str, array: pa.Array) -> pa.Array:
    """One of the kinds' arrow types: int64, float64, bool, timestamp[us] (UTC when it has a
    zone), date32, string or null."""
    t = array.type
    if pa.types.is_dictionary(t):
        return _normalised(name, array.dictionary_decode())
    if pa.types.is_integer(t) and t != pa.int64():
        try:
            return array.cast(pa.int64())
        except pa.ArrowInvalid:
            raise ValueError(f"column {name}: integers beyond the range of BIGINT") from None
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return array.cast(pa.float64()) if t != pa.float64() else array
    if pa.types.is_timestamp(t):
        return array.cast(pa.timestamp("us", tz="UTC" if t.tz else None), safe=False)
    if pa.types.is_date(t):
        return array.cast(pa.date32()) if t != pa.date32() else array
    if pa.types.is_boolean(t) or pa.types.is_null(t) or t in (pa.int64(), pa.string()):
        return array
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return array.cast(pa.string())
    if pa.types.is_nested(t):
        return pa.array([None if v is None else _json(v) for v in array.to_pylist()], pa.string())
    return pa.array([None if v is None else str(v) for v in array.to_pylist()], pa.string())


def to_arrow(frame: pd.DataFrame) -> tuple[pa.Table, dict[str, str]]:
    """The batch as a pyarrow table of kinds, and each column's kind; ValueError naming the
    column for a value no kind holds."""
    arrays, names = [], [str(c) for c in frame.columns]
    for name, (_, series) in zip(names, frame.items()):
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        if series.dtype == object:
            series = _objects(series)
        try:
            array = pa.array(series, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            array = pa.array(series.map(lambda v: None if v is None or v is pd.NA else str(v)),
                             pa.string())  # mixed Python objects: as text
        arrays.append(_normalised(name, array))
    table = pa.table(arrays, names=names)
    return table, {name: kind_of(table.schema.field(name).type) for name in names}


def conform(table: pa.Table, kinds: dict[str, str]) -> pa.Table:
    """`table` with floats cast to integers for the integer columns of `kinds` (the table's);
    ValueError naming the column when one holds a fraction."""
    for i, field in enumerate(table.schema):
        if kinds.get(field.name) == "integer" and pa.types.is_floating(field.type):
            try:
                table = table.set_column(i, field.name, table.column(i).cast(pa.int64()))
            except pa.ArrowInvalid:  # a safe cast refuses fractions, infinities, overflow
                raise ValueError(f"column {field.name} is an integer column, the batch's "
                                 "values are not all whole numbers") from None
    return table


def without_zone(table: pa.Table, *, booleans_as_int: bool = False) -> pa.Table:
    """`table` with instants as naive UTC times (a database without a zoned type) and, if
    asked, booleans as 0/1 (LOAD DATA does not read true/false)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz:
            table = table.set_column(i, field.name, table.column(i).cast(pa.timestamp("us")))
        elif booleans_as_int and pa.types.is_boolean(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.int8()))
    return table


def csv_bytes(table: pa.Table, *, null: str = "") -> pa.Buffer:
    """`table` as CSV without a header: every value quoted, a null an unquoted `null`, so an
    empty string ("") and a missing value (nothing) stay apart."""
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, null_string=null,
                                                    quoting_style="all_valid"))
    return sink.getvalue()


def python_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """`table` as one tuple of Python values per row (for a driver's executemany)."""
    return list(zip(*(column.to_pylist() for column in table.columns)))


def to_frame(names: Sequence[str], kinds: Sequence[str],
             rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    """Rows read back from a table as a frame of pandas types: Int64, float64, boolean,
    datetime64 (UTC for "timestamptz"), Python dates and text; NULL is missing."""
    columns = list(zip(*rows)) or [()] * len(names)
    data: dict[str, Any] = {}
    for name, kind, values in zip(names, kinds, columns):
        if kind == "integer":
            data[name] = pd.array([None if v is None else int(v) for v in values], dtype="Int64")
        elif kind == "float":
            data[name] = np.array([np.nan if v is None else float(v) for v in values],
                                  dtype="float64")
        elif kind == "boolean":
            data[name] = pd.array([None if v is None else bool(v) for v in values], dtype="boolean")
        elif kind in ("timestamptz", "timestamp"):
            moments = pd.to_datetime(pd.Series(values, dtype=object), utc=kind == "timestamptz",
                                     format="ISO8601")
            data[name] = moments.dt.as_unit("us").array
        elif kind == "date":
            data[name] = pd.array([v if v is None or isinstance(v, date) else date.fromisoformat(v)
                                   for v in values], dtype=object)
        else:
            data[name] = pd.array(list(values), dtype="str")
    return pd.DataFrame(data, columns=list(names))


__all__ = ["ACCEPTS", "KINDS", "conform", "csv_bytes", "fits", "kind_of", "python_rows",
           "to_arrow", "to_frame", "without_zone"]
