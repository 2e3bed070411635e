"""Raw batches as pandas, each shard's rows converted once when a shard is cut in several.

Arrow -> pandas costs ~0.5 ms a batch whatever its rows (a demo batch of 2,000 rows: 0.58
ms as cut, 0.02 ms as a slice of its shard already converted). A file source cuts every
batch of a shard from one table of the shard's rows (etl.sources.files.ShardRows), so in a
process that works whole shards (embedded mode) the first batch of a shard converts the
shard and each batch is a slice of it: a shard of 9 batches of the demo, 5.2 -> 1.5 ms.

A slice must be the very frame its own conversion would give, so this is used only where
conversion depends on the column types alone: plain numbers, booleans, text and times, no
pandas metadata in the schema, pandas copying on write (a stage writing to its batch then
writes to its own copy); and an integer or boolean column holding nulls in the shard but
none in the batch (which would convert as floats or objects at the shard, as integers or
booleans alone) sends that batch through its own conversion. Everything else converts per
batch as before. A shard's frame is dropped when its last batch is taken, and at most
`max_rows` rows are held (least recently used dropped first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from etl.core.lazy import LazyModule

pd = LazyModule("pandas")
pa = LazyModule("pyarrow")

#: Rows of converted shards held at most per process.
MAX_ROWS = 2_000_000


def _copy_on_write() -> bool:
    """Whether pandas copies a slice before writing to it (always from pandas 3)."""
    import pandas

    return int(pandas.__version__.split(".")[0]) >= 3 or pandas.options.mode.copy_on_write is True


def _typed_alone(kind: pa.DataType) -> bool:
    """Whether Arrow -> pandas of a column of `kind` depends on its type alone (nulls in
    integers and booleans aside, checked per batch)."""
    types = pa.types
    return (types.is_integer(kind) or types.is_floating(kind) or types.is_boolean(kind)
            or types.is_string(kind) or types.is_large_string(kind) or types.is_timestamp(kind))


def _nullable_kind(kind: pa.DataType) -> bool:
    """Integers and booleans: pandas gives them another dtype when they hold nulls."""
    return pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def _eligible(whole: pa.Table) -> bool:
    """Whether a slice of `whole` converted once is each batch's own conversion (checked
    once per shard, when it would be converted)."""
    metadata = whole.schema.metadata or {}
    return (b"pandas" not in metadata and all(_typed_alone(f.type) for f in whole.schema)
            and _copy_on_write())


class ShardFrames:
    """Converted shards of this process, by the Arrow table of the shard's rows."""

    def __init__(self, *, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._frames: OrderedDict[int, tuple[pa.Table, pd.DataFrame, list[int]]] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def frame(self, batch: pa.Table, whole: pa.Table | None, begin: int) -> pd.DataFrame:
        """`batch` as pandas; `whole` is the table of its shard's rows it was sliced from
        at row `begin` (None: not a slice), converted once for all its batches."""
        if whole is None or batch.num_rows >= whole.num_rows or whole.num_rows > self.max_rows:
            return batch.to_pandas(use_threads=False)
        with self._lock:
            held = self._frames.get(id(whole))
            if held is not None and held[0] is not whole:  # an id reused: a new table
                self._drop(id(whole))
                held = None
        if held is None:
            if not _eligible(whole):
                return batch.to_pandas(use_threads=False)
            held = self._convert(whole)
        whole_table, converted, nullable = held
        end = begin + batch.num_rows
        if end >= whole_table.num_rows:  # the shard's last batch: its frame is not needed again
            with self._lock:
                if self._frames.get(id(whole)) is held:
                    self._drop(id(whole))
        if any(not batch.column(i).null_count for i in nullable):
            return batch.to_pandas(use_threads=False)  # it converts to other dtypes alone
        frame = converted.iloc[begin:end]
        frame.index = pd.RangeIndex(len(frame))  # labelled as its own conversion labels it
        return frame

    def _convert(self, whole: pa.Table) -> tuple[pa.Table, pd.DataFrame, list[int]]:
        """Convert a shard and hold it: (its table, its frame, its integer and boolean
        columns with nulls)."""
        converted = whole.to_pandas(use_threads=False)
        nullable = [i for i, field in enumerate(whole.schema) if _nullable_kind(field.type)
                    and whole.column(i).null_count]
        with self._lock:  # another thread may have converted the shard meanwhile
            held = self._frames.get(id(whole))
            if held is None or held[0] is not whole:
                self._drop(id(whole))
                self._frames[id(whole)] = held = (whole, converted, nullable)
                self._rows += whole.num_rows
                while self._rows > self.max_rows and len(self._frames) > 1:
                    self._drop(next(iter(self._frames)))
        return held

    def _drop(self, key: int) -> None:
        dropped = self._frames.pop(key, None)
        if dropped is not None:
            self._rows -= dropped[0].num_rows

    def clear(self) -> None:
        """Forget every converted shard."""
        with self._lock:
            self._frames.clear()
            self._rows = 0


#: This process's converted shards (embedded mode; etl.runtime.embedded sets it on the run).
SHARD_FRAMES = ShardFrames()

__all__ = ["MAX_ROWS", "SHARD_FRAMES", "ShardFrames"]
