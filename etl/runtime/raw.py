"""Raw payloads: how a fetched batch lands, and how a later step gets its rows back.

A fetched batch lands in one of two ways; its RawPayload in the state store says which:

- a **copy**: the rows as Parquet in the object store, the RawPayload holding the object's
  key, size and sha256 (the claim check). Rows a source cannot give again (an API page, a
  queue, a table that changes) are kept this way, and so is every batch of a pipeline with
  `raw_landing="copy"`.
- a **pointer**: for a source that gives the same rows for the same cursor range while its
  fingerprint is unchanged (etl.sources.base.Recuttable: a file, whose fingerprint is its
  content hash), nothing is written; the RawPayload records `source:<fingerprint>` in
  place of a sha256, and the batch's cursor range and row count. A step that needs the
  rows in another process (a crash, a resume, a replay, a notebook) cuts them again, after
  checking the source still has that fingerprint and gives the same rows and end cursor.

Either way the fetching process keeps the rows in its frame cache (the Batch, which may
name the shard's rows it was cut from), so the clean that follows in the same process reads
nothing back.
"""

from __future__ import annotations

import logging

from etl.core.errors import BatchError
from etl.core.lazy import LazyModule
from etl.core.names import raw_key
from etl.core.parquet import raw_parquet_bytes
from etl.runtime.context import RunContext
from etl.runtime.framecache import frames
from etl.sources.base import Batch, Recuttable
from etl.stores.state import RawPayload
from shards import ShardPlan

pa = LazyModule("pyarrow")

log = logging.getLogger(__name__)

#: What a pointer's RawPayload.sha256 starts with; the source's fingerprint follows.
POINTER = "source:"


def is_pointer(payload: RawPayload) -> bool:
    """Whether `payload` points into its source instead of naming a copy."""
    return payload.sha256.startswith(POINTER)


def land(ctx: RunContext, shard: int, batch: int, found: Batch) -> RawPayload:
    """Land a fetched batch (a pointer or a copy, as the pipeline's raw_landing says) and
    return the RawPayload to record for it."""
    key = raw_key(ctx.run_id, shard, batch)
    if ctx.pipeline.raw_pointers():
        digest, size = POINTER + ctx.pipeline.source.fingerprint(), 0
    else:
        info = ctx.objects.put_bytes(key, raw_parquet_bytes(found.table))
        digest, size = info.sha256, info.bytes
    frames.put(key, digest, found, rows=found.table.num_rows)  # the Batch: its shard too
    return RawPayload(run_id=ctx.run_id, shard=shard, batch=batch, key=key, bytes=size,
                      sha256=digest, rows=found.table.num_rows,
                      cursor_start=found.cursor_start, cursor_end=found.cursor_end)


def recut(source: object, plan: ShardPlan, payload: RawPayload, *, where: str) -> pa.Table:
    """The rows a pointer payload stands for, cut again from `source`. BatchError when the
    source cannot cut, has changed since the fetch, or no longer gives the same rows."""
    assert is_pointer(payload)
    if not isinstance(source, Recuttable):
        raise BatchError(f"{where}: the batch was landed as a pointer into its source, and "
                         "this pipeline's source cannot cut it again")
    if source.fingerprint() != payload.sha256[len(POINTER):]:
        raise BatchError(f"{where}: the batch was landed as a pointer into its source, and the "
                         "source changed since it was fetched, so its rows are gone: start a "
                         "new run (--fresh); set raw_landing=\"copy\" to keep raw batches")
    found = source.recut(plan, payload.shard, after=payload.cursor_start, rows=payload.rows)
    if (found.table.num_rows, found.cursor_end) != (payload.rows, payload.cursor_end):
        raise BatchError(f"{where}: the source no longer gives the batch's {payload.rows} rows "
                         f"after cursor {payload.cursor_start!r} (got {found.table.num_rows} "
                         f"ending at {found.cursor_end!r}): start a new run (--fresh)")
    log.debug("%s: cut again from the source (%d rows)", where, payload.rows)
    return found.table


__all__ = ["POINTER", "is_pointer", "land", "recut"]
