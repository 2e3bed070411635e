"""Where a batch's quarantined rows are kept, and how they are read back.

A clean usually rejects a few rows of a batch (the demo: about 46 of 1,800). Those ride in
the clean's own commit to the state store (QuarantinedRows, as an Arrow IPC stream): no
object, no second file written and synced per batch (an object-store request on S3), and
the rows are there exactly when the count that says so is. A larger quarantine (KEPT_ROWS
rows or more, or its bytes over KEPT_BYTES: a whole batch refused, say) is a Parquet object
at `runs/<run>/quarantine/shard=S/batch=B.parquet`, written before the commit, as every
quarantine was before. Readers (the inspector, `etl quarantine`, replay) ask the state
store first, then the object store, so runs of either kind read the same way.
"""

from __future__ import annotations

from typing import Container

from etl.core.errors import ObjectNotFound
from etl.core.lazy import LazyModule
from etl.core.names import quarantine_key
from etl.core.parquet import from_parquet_bytes, stringify_mixed, to_parquet_bytes
from etl.stores.objects import ObjectStore
from etl.stores.state import StateStore

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")

#: Quarantined rows keep their ordinal in the raw payload here (null when unknown).
ROW_COLUMN = "_row"
#: Quarantines of fewer rows ride in the clean's commit (a few dozen per batch is usual);
#: as an object they are written without dictionaries or statistics
#: (etl.core.parquet.to_parquet_bytes, `plain`). Larger ones, a whole batch refused say,
#: are objects that keep the dictionaries that make repeated values small.
KEPT_ROWS = 1_000
PLAIN_QUARANTINE_ROWS = KEPT_ROWS
#: ... and at most this many bytes (a MongoDB document stops at 16 MiB; long text columns
#: can make even a few hundred rows large).
KEPT_BYTES = 1 << 20


def keep(objects: ObjectStore, run_id: str, shard: int, batch: int,
         quarantined: pd.DataFrame) -> bytes | None:
    """Store a batch's quarantined rows: the bytes for the clean's commit
    (`complete_stage(quarantine=...)`) when they ride in it, else None, once they are an
    object (or there are none)."""
    if not len(quarantined):
        return None
    if len(quarantined) < KEPT_ROWS:
        data = quarantine_bytes(quarantined, arrow=True)
        if len(data) <= KEPT_BYTES:
            return data
    objects.put_bytes(quarantine_key(run_id, shard, batch), quarantine_bytes(quarantined))
    return None


def read(state: StateStore, objects: ObjectStore, run_id: str, shard: int, batch: int, *,
         objects_present: Container[str] | None = None) -> pd.DataFrame | None:
    """A batch's quarantined rows, from the state store or its object; None when it kept
    none (nothing rejected, or not cleaned yet). `objects_present`: the quarantine objects
    known to exist (one listing for many batches instead of a request per batch)."""
    data = state.get_quarantine(run_id, shard, batch)
    if data is not None:
        return pa.ipc.open_stream(data).read_all().to_pandas()
    key = quarantine_key(run_id, shard, batch)
    if objects_present is not None and key not in objects_present:
        return None
    try:
        return from_parquet_bytes(objects.get_bytes(key))
    except ObjectNotFound:
        return None


def quarantine_bytes(quarantined: pd.DataFrame, *, arrow: bool = False) -> bytes:
    """Quarantined rows as Parquet (or, `arrow`, an Arrow IPC stream), ROW_COLUMN as an
    integer. Columns keep their own types; a column whose values are of mixed kinds (rows
    rejected for a bad value often hold numbers and text in one column) is stored as text,
    and if the frame still cannot be stored as it is, every value is stored as text."""
    columns = list(quarantined.columns)
    rows = quarantined[ROW_COLUMN] if ROW_COLUMN in columns else None
    # ROW_COLUMN once and last, as clean_frame leaves it: replaced in place (drop() and
    # assign() cost ~0.3 ms more per batch, whatever its size)
    last = rows is not None and columns.index(ROW_COLUMN) == len(columns) - 1
    values = quarantined if rows is None or last else quarantined.iloc[
        :, [i for i, name in enumerate(columns) if name != ROW_COLUMN]]
    for as_text in (False, True):
        if last and not as_text:  # ROW_COLUMN is no object column: stringify_mixed skips it
            kept = stringify_mixed(values)
            if rows.dtype != np.int64:  # nullable (clean_frame: no lineage, unparseable rows)
                kept = kept.copy(deep=False)
                kept.isetitem(len(columns) - 1, rows.astype("Int64").to_numpy())
        else:
            if last:
                values = values.iloc[:, :-1]
            kept = stringify_mixed(values.astype("string") if as_text else values)
            if rows is not None:
                kept = kept.assign(**{ROW_COLUMN: rows.astype("Int64").to_numpy()})
        try:
            if arrow:
                return _arrow_stream(kept)
            return to_parquet_bytes(kept, plain=len(kept) < PLAIN_QUARANTINE_ROWS)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            if as_text:
                raise
    raise AssertionError("unreachable")


def _arrow_stream(frame: pd.DataFrame) -> bytes:
    """`frame` as an Arrow IPC stream, pandas metadata included (dtypes come back on read),
    uncompressed: a few dozen rows, written in microseconds."""
    from etl.core.arrow import frame_to_arrow

    table = frame_to_arrow(frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
