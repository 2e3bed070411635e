"""Batches as Parquet bytes: how raw, staged and quarantined batches are stored.

Snappy-compressed, no pandas index, written and read by pyarrow: a round trip of a batch is
a few milliseconds, and the pandas dtypes (nullable ints, strings, tz-aware times) survive.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def to_parquet_bytes(frame: pd.DataFrame | pa.Table) -> bytes:
    """`frame` (pandas or Arrow) as Parquet file bytes."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def from_parquet_bytes(data: bytes) -> pd.DataFrame:
    """The DataFrame stored in Parquet file bytes."""
    return pq.read_table(io.BytesIO(data)).to_pandas()


def stringify_mixed(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with object columns that hold mixed Python types turned into strings, so
    that pyarrow can store them (rows of bad input often mix numbers and text)."""
    changed = {}
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object:
            kinds = {type(v) for v in values.dropna().tolist()}
            if len(kinds) > 1:
                changed[column] = values.astype("string")
    return frame.assign(**changed) if changed else frame
