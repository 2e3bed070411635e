"""The three batch steps, fetch -> clean -> load, as plain functions of a RunContext.

The Dramatiq actors (etl.actors) are thin wrappers around these, so the logic can be tested
and reasoned about without a broker. Every step is idempotent: it checks the dedup ledger
first, writes under deterministic keys, and records completion through the state store's
exactly-once methods, so a redelivered or repeated message changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import pandas as pd

from etl.context import RunContext
from etl.errors import BatchError, ObjectNotFound
from etl.faults import crash_point
from etl.framecache import frames
from etl.keys import quarantine_key, raw_key, staged_key
from etl.parquet import from_parquet_bytes, stringify_mixed, to_parquet_bytes
from etl.sources import SOURCE_ERROR_COLUMN
from etl.state import RawPayload, task_fingerprint
from stages import run_stages
from stages.base import REASON_COLUMN, STAGE_COLUMN

log = logging.getLogger(__name__)


@dataclass
class FetchOutcome:
    """What a fetch did: the batch's pointer (None when the shard had no rows left) and
    whether the next batch of the shard should be fetched."""

    payload: RawPayload | None
    fetch_next: bool
    shard_progress: float | None = None  # share of the shard fetched so far, when known


def _where(ctx: RunContext, shard: int, batch: int, key: str | None = None) -> str:
    text = f"run {ctx.run_id} shard {shard} batch {batch}"
    return f"{text} (object {ctx.objects.uri(key)})" if key else text


def fetch(ctx: RunContext, shard: int, batch: int) -> FetchOutcome:
    """Read batch `batch` of `shard` from the source into the object store."""
    state = ctx.state
    checkpoint = state.get_checkpoint(ctx.run_id, shard)
    if checkpoint is None:
        raise BatchError(f"{_where(ctx, shard, batch)}: no checkpoint; was the run created?")
    if checkpoint.batches_fetched > batch:  # done before (redelivery): hand on the pointer
        payload = state.get_payload(ctx.run_id, shard, batch)
        more = (not checkpoint.fetch_done) and checkpoint.batches_fetched == batch + 1
        return FetchOutcome(payload, fetch_next=more)
    if checkpoint.fetch_done or checkpoint.batches_fetched < batch:
        log.debug("%s: stale fetch message ignored", _where(ctx, shard, batch))
        return FetchOutcome(None, fetch_next=False)
    found = ctx.pipeline.source.read_batch(ctx.plan, shard, after=checkpoint.cursor,
                                           limit=ctx.pipeline.batch_size)
    rows = found.table.num_rows
    if not rows:
        state.finish_fetch(ctx.run_id, shard, batch)
        return FetchOutcome(None, fetch_next=False)
    key = raw_key(ctx.run_id, shard, batch)
    info = ctx.objects.put_bytes(key, to_parquet_bytes(found.table))
    frames.put(key, info.sha256, found.table)
    crash_point("fetch.after_put")
    payload = RawPayload(run_id=ctx.run_id, shard=shard, batch=batch, key=key, bytes=info.bytes,
                         sha256=info.sha256, rows=rows,
                         cursor_start=found.cursor_start, cursor_end=found.cursor_end)
    state.record_fetch(payload, exhausted=found.exhausted)
    state.mark_done(task_fingerprint("fetch", ctx.run_id, shard, batch), "fetch", ctx.run_id)
    crash_point("fetch.after_record")
    return FetchOutcome(payload, fetch_next=not found.exhausted, shard_progress=found.shard_progress)


def _read_bytes(ctx: RunContext, shard: int, batch: int, key: str) -> bytes:
    try:
        return ctx.objects.get_bytes(key)
    except ObjectNotFound:
        raise BatchError(f"{_where(ctx, shard, batch, key)}: object is missing") from None


def _read_frame(ctx: RunContext, shard: int, batch: int, key: str, *,
                sha256: str | None = None) -> pd.DataFrame:
    if sha256 is not None and (cached := frames.pop(key, sha256)) is not None:
        return cached.to_pandas()
    data = _read_bytes(ctx, shard, batch, key)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise BatchError(f"{_where(ctx, shard, batch, key)}: content does not match its "
                         "recorded sha256 (corrupt or overwritten)")
    try:
        return from_parquet_bytes(data)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a malformed batch
        raise BatchError(f"{_where(ctx, shard, batch, key)}: cannot read batch: {exc}") from exc


def clean(ctx: RunContext, shard: int, batch: int) -> int | None:
    """Apply the pipeline's stages to a fetched batch; stage clean rows and quarantine bad
    ones. Returns the clean row count, or None when there was nothing to do."""
    state = ctx.state
    if state.is_done(task_fingerprint("clean", ctx.run_id, shard, batch)):
        return None
    payload = state.get_payload(ctx.run_id, shard, batch)
    if payload is None:  # not fetched (shard empty, or a stale message): whoever fetches
        log.debug("%s: nothing fetched, clean skipped", _where(ctx, shard, batch))
        return None      # this batch sends its own clean
    frame = _read_frame(ctx, shard, batch, payload.key, sha256=payload.sha256)
    unparseable = pd.DataFrame()
    if SOURCE_ERROR_COLUMN in frame.columns:
        broken = frame[SOURCE_ERROR_COLUMN].notna()
        unparseable = frame.loc[broken, [SOURCE_ERROR_COLUMN]].rename(
            columns={SOURCE_ERROR_COLUMN: REASON_COLUMN}).assign(**{STAGE_COLUMN: "source"})
        frame = frame.loc[~broken].drop(columns=[SOURCE_ERROR_COLUMN])
    try:
        result = run_stages(frame, ctx.pipeline.stages)
    except Exception as exc:  # stages are pure: a failure repeats, so it is permanent
        raise BatchError(f"{_where(ctx, shard, batch, payload.key)}: {exc}") from exc
    quarantined = pd.concat([unparseable, result.quarantined], ignore_index=True) \
        if len(unparseable) else result.quarantined
    ctx.objects.put_bytes(staged_key(ctx.run_id, shard, batch), to_parquet_bytes(result.clean))
    if len(quarantined):
        ctx.objects.put_bytes(quarantine_key(ctx.run_id, shard, batch),
                              to_parquet_bytes(stringify_mixed(quarantined.astype("string"))))
    crash_point("clean.after_stage")
    state.complete_stage(ctx.run_id, shard, batch, "clean",
                         {"rows_cleaned": len(result.clean), "rows_quarantined": len(quarantined)})
    return len(result.clean)


def load(ctx: RunContext, shard: int, batch: int) -> int | None:
    """Write a cleaned batch to the sink (idempotently). Returns rows written, or None when
    there was nothing to do."""
    state = ctx.state
    if state.is_done(task_fingerprint("load", ctx.run_id, shard, batch)):
        return None
    if not state.is_done(task_fingerprint("clean", ctx.run_id, shard, batch)):
        log.debug("%s: not cleaned, load skipped", _where(ctx, shard, batch))
        return None  # the clean of this batch, when it happens, sends its own load
    key = staged_key(ctx.run_id, shard, batch)
    sink = ctx.pipeline.sink
    if hasattr(sink, "write_parquet"):  # a Parquet sink takes the staged file as it is
        written = sink.write_parquet(_read_bytes(ctx, shard, batch, key), run_id=ctx.run_id,
                                     shard=shard, batch=batch)
    else:
        frame = _read_frame(ctx, shard, batch, key)
        written = sink.write_batch(frame, run_id=ctx.run_id, shard=shard, batch=batch)
    crash_point("load.after_sink")
    state.complete_stage(ctx.run_id, shard, batch, "load", {"rows_loaded": written})
    crash_point("load.after_count")
    return written
