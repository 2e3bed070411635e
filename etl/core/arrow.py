"""pandas batches as Arrow tables, paying pyarrow's per-column bookkeeping once per schema.

`pa.Table.from_pandas` spends ~60 us of Python per column whatever the rows: it looks each
column up, inspects its dtype and builds the pandas metadata (the JSON that brings nullable
ints, strings and time zones back on read). For a 22-column quarantine of a dozen rows that
is 1.8 ms, more than writing the Parquet file. A run converts batch after batch with the
same columns and dtypes, so the first batch of a schema goes through `from_pandas`, and
later ones reuse its Arrow schema (metadata included) and convert each column as
`from_pandas` itself does. Any doubt (an object column, whose Arrow type depends on its
values; repeated or non-text column names; `attrs`; a column that comes out as another
type) goes through `from_pandas`, so the table is the same, and so are its errors.
"""

from __future__ import annotations

import threading
from typing import Any, Hashable

from etl.core.lazy import LazyModule

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")

#: Arrow schemas of frames converted before, by column names and dtypes. Bounded: a run
#: has a few (clean batches, quarantine, a drifted batch); a long-lived worker many runs.
_SCHEMAS: dict[Hashable, pa.Schema] = {}
_MAX_SCHEMAS = 128
_LOCK = threading.Lock()  # worker threads convert batches side by side


def frame_to_arrow(frame: pd.DataFrame) -> pa.Table:
    """`frame` as Arrow, without its index, equal to `pa.Table.from_pandas(frame,
    preserve_index=False)` (schema and pandas metadata included); on one thread (workers
    and processes are the parallelism)."""
    arrays = _column_arrays(frame)
    key = _signature(frame, arrays)
    schema = _SCHEMAS.get(key) if key is not None else None
    if schema is not None:
        table = _convert(frame, arrays, schema)
        if table is not None:
            return table
    table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    if key is not None:
        with _LOCK:
            while len(_SCHEMAS) >= _MAX_SCHEMAS:
                _SCHEMAS.pop(next(iter(_SCHEMAS)))
            _SCHEMAS[key] = table.schema
    return table


def _column_arrays(frame: pd.DataFrame) -> list[Any]:
    """The frame's columns as arrays (numpy or pandas extension arrays), by position.
    DataFrame._iter_column_arrays is pandas' own way to them (not public; ~10 us a column
    less than building each Series): when a pandas lacks it, the Series' arrays."""
    own = getattr(frame, "_iter_column_arrays", None)
    if own is not None:
        return list(own())
    return [series.array if not isinstance(series.dtype, np.dtype) else series.to_numpy()
            for _, series in frame.items()]


def _signature(frame: pd.DataFrame, arrays: list[Any]) -> Hashable | None:
    """What fixes the Arrow schema of `frame`: its column names and dtypes. None when the
    values decide it too (object columns) or the metadata holds more (attrs, odd labels)."""
    columns = frame.columns
    if type(columns) is not pd.Index or frame.attrs or not columns.is_unique:
        return None  # RangeIndex / MultiIndex labels, attrs: from_pandas records them
    dtypes = tuple(array.dtype for array in arrays)
    if any(dtype == object for dtype in dtypes) or columns.inferred_type != "string":
        return None
    key = (tuple(columns), columns.dtype, columns.name, dtypes)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _convert(frame: pd.DataFrame, arrays: list[Any], schema: pa.Schema) -> pa.Table | None:
    """The columns of `frame` converted as from_pandas does (pa.array of each, pandas
    nulls as nulls), under `schema`; None when a column comes out otherwise or fails
    (from_pandas then decides, and says what is wrong)."""
    converted: list[Any] = []
    try:
        for position, (values, field) in enumerate(zip(arrays, schema)):
            if isinstance(values, np.ndarray) and values.dtype.kind in "biufmM":
                array = pa.array(values, from_pandas=True)
            elif (utc := _utc_values(values, field.type)) is not None:
                array = pa.array(utc, type=field.type, from_pandas=True)
            elif hasattr(values, "__arrow_array__"):
                array = pa.array(values)
            else:  # time zones, categoricals...: the Series, as from_pandas passes it
                array = pa.array(frame.iloc[:, position], from_pandas=True)
            if array.type != field.type:
                return None
            converted.append(array)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return pa.Table.from_arrays(converted, schema=schema)


def _utc_values(values: Any, kind: pa.DataType) -> np.ndarray | None:
    """The numpy datetime64 values (UTC, NaT for missing) behind a time-zone-aware pandas
    column, when `kind` is the Arrow timestamp of that very unit and zone; else None.
    pandas keeps such a column as UTC instants plus its zone, as Arrow does, so the array
    is the same as from_pandas makes it from the Series, without building the Series
    (~60 us a column, against ~8)."""
    utc = getattr(values, "_ndarray", None)  # DatetimeArray's own (not public) values
    zone = getattr(getattr(values, "dtype", None), "tz", None)
    if (utc is None or zone is None or not isinstance(utc, np.ndarray) or utc.dtype.kind != "M"
            or not pa.types.is_timestamp(kind) or kind.tz is None):
        return None
    if np.datetime_data(utc.dtype)[0] != kind.unit or str(zone) != kind.tz:
        return None
    return utc
