"""Keys held in more than one file of a Parquet dataset: the count ParquetSink's KeyAudit
gives the run summary ("keys in more than one batch").

The run pays this after its workers end, in the serial part of `etl run`, so it is counted
without pandas' groupby (which cost ~4x): only the key columns are read, each key column
becomes integer codes (Arrow's dictionary encoding: equal values, and all nulls, share a
code), the codes of a row are folded into one integer per key, and a hash of
(key, file) pairs says how many files hold each key. Where Arrow's equality could differ
from pandas' (float keys: NaN is null to pandas, not to Arrow; a key column typed
differently in two files, which pandas would compare after conversion; other types), the
count is made in pandas as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from etl.core.lazy import LazyModule

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")
pc = LazyModule("pyarrow.compute")
pq = LazyModule("pyarrow.parquet")

log = logging.getLogger(__name__)

#: Folded codes stay below this, so that folding one more column cannot overflow int64.
_LIMIT = 1 << 62


def read_keys(files: Sequence[Path], key: Sequence[str]) -> list[pa.Table]:
    """The key columns of each file holding all of them (others hold no key: skipped)."""
    tables = []
    for file in files:  # one thread per file: a pool for a few columns costs more CPU
        parquet = pq.ParquetFile(file)  # than it saves (180 files: 0.24 -> 0.12 s CPU)
        names = set(parquet.schema_arrow.names)
        if all(k in names for k in key):
            tables.append(parquet.read(columns=list(key), use_threads=False))
    return tables


def _comparable(field: pa.Field) -> bool:
    """Key types whose Arrow equality is pandas' equality (nulls one value in both)."""
    kind = field.type
    return (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_boolean(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind))


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """An int64 code per value (equal values, and all nulls, share one) and how many codes."""
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, max(len(encoded.dictionary), 1)


def _dense(values: np.ndarray) -> tuple[np.ndarray, int]:
    """`values` renumbered 0..n-1 (equal values, equal numbers), and n."""
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), len(uniques)


def _in_several_arrow(tables: list[pa.Table], key: Sequence[str]) -> int:
    keys = pa.concat_tables(tables)
    folded, size = _codes(keys.column(key[0]))
    for name in key[1:]:
        codes, count = _codes(keys.column(name))
        if size * count >= _LIMIT:
            folded, size = _dense(folded)
        folded, size = folded * count + codes, size * count
    files = len(tables)
    if size * files >= _LIMIT:
        folded, size = _dense(folded)
    file_of = np.repeat(np.arange(files, dtype=np.int64), [t.num_rows for t in tables])
    pairs = pd.unique(folded * files + file_of)  # each key once per file holding it
    per_key, _ = _dense(pairs // files)
    return int(np.count_nonzero(np.bincount(per_key) > 1))


def _in_several_pandas(tables: list[pa.Table], key: Sequence[str]) -> int:
    frames = [t.select(list(key)).to_pandas().drop_duplicates().assign(_file=n)
              for n, t in enumerate(tables)]
    keys = pd.concat(frames, ignore_index=True)
    return int((keys.groupby(list(key), dropna=False).size() > 1).sum())


def keys_in_several(tables: list[pa.Table], key: Sequence[str]) -> int:
    """How many distinct keys are in more than one of `tables` (a repeat inside one table
    does not count). A null is a key value like any other."""
    if len(tables) < 2:
        return 0
    schema = tables[0].select(list(key)).schema
    if all(_comparable(f) for f in schema) and all(
            t.select(list(key)).schema.equals(schema) for t in tables[1:]):
        return _in_several_arrow(tables, key)
    log.debug("key columns %s typed %s: counted in pandas", list(key), schema)
    return _in_several_pandas(tables, key)


__all__ = ["keys_in_several", "read_keys"]
