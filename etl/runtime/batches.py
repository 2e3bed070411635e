"""The three batch steps, fetch -> clean -> load, as plain functions of a RunContext.

The Dramatiq actors (etl.runtime.actors) are thin wrappers around these, so the logic can be tested
and reasoned about without a broker. Every step is idempotent: it checks the dedup ledger
first, writes under deterministic keys, and records completion through the state store's
exactly-once methods, so a redelivered or repeated message changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

from etl.core.lazy import LazyModule
from etl.runtime.context import RunContext
from etl.core.errors import BatchError, ObjectNotFound
from etl.core.faults import crash_point
from etl.runtime.framecache import cleaned, frames
from etl.runtime.raw import is_pointer, land, recut
from etl.core.arrow import frame_to_arrow
from etl.core.names import staged_key
from etl.core.parquet import arrow_checked, from_parquet_bytes, raw_parquet_bytes, to_parquet_bytes
from etl.runtime.keys import missing_key, with_sequence
from etl.runtime.quarantine import ROW_COLUMN, keep as keep_quarantine
from etl.sinks.base import ParquetWriter, Sequenced, SerialCommits, takes_rows
from etl.sources.base import SOURCE_COLUMNS, SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN
from etl.drift import apply_policy, compare
from etl.core.names import task_fingerprint
from etl.stores.state import ErrorRecord, Fence, RawPayload
from stages import run_stages
from stages.base import REASON_COLUMN, STAGE_COLUMN

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")

log = logging.getLogger(__name__)

#: Added to ordinals to make index labels while stages run: a stage that re-indexes its
#: output (0..n-1) then cannot pass for one that kept row identity.
ROW_OFFSET = 1 << 40


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


def fetch(ctx: RunContext, shard: int, batch: int, *, fence: Fence | None = None) -> FetchOutcome:
    """Read batch `batch` of `shard` from the source and land it (etl.runtime.raw)."""
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
        state.finish_fetch(ctx.run_id, shard, batch, fence=fence, release=True)
        return FetchOutcome(None, fetch_next=False)
    payload = land(ctx, shard, batch, found)
    crash_point("fetch.after_put")
    # the pointer, the cursor, the ledger entry and the lease's end: one commit
    state.record_fetch(payload, exhausted=found.exhausted, fence=fence, release=True, ledger=True)
    crash_point("fetch.after_record")
    return FetchOutcome(payload, fetch_next=not found.exhausted, shard_progress=found.shard_progress)


def _read_bytes(ctx: RunContext, shard: int, batch: int, key: str) -> bytes:
    try:
        return ctx.objects.get_bytes(key)
    except ObjectNotFound:
        raise BatchError(f"{_where(ctx, shard, batch, key)}: object is missing") from None


def _raw_bytes(ctx: RunContext, payload: RawPayload) -> bytes:
    """A raw payload's bytes. An object lost after its fetch was recorded (deleted, a
    bucket lifecycle rule, a restore) is cut again from the source at the payload's recorded
    cursor range: the run's source fingerprint says the source holds the same data, and the
    batch must come out to the same rows and the same bytes (sha256), or it is an error."""
    try:
        return ctx.objects.get_bytes(payload.key)
    except ObjectNotFound:
        pass
    where = _where(ctx, payload.shard, payload.batch, payload.key)
    recorded = ctx.run.params.get("source_fingerprint")
    if recorded is not None and recorded != ctx.pipeline.source.fingerprint():
        raise BatchError(f"{where}: object is missing, and the source changed since the run "
                         "started, so the batch cannot be cut again: start a new run (--fresh)")
    found = ctx.pipeline.source.read_batch(ctx.plan, payload.shard, after=payload.cursor_start,
                                           limit=ctx.pipeline.batch_size)
    data = raw_parquet_bytes(found.table)
    if (found.table.num_rows, found.cursor_end) != (payload.rows, payload.cursor_end) \
            or hashlib.sha256(data).hexdigest() != payload.sha256:
        raise BatchError(f"{where}: object is missing, and the source no longer gives the same "
                         f"rows after cursor {payload.cursor_start!r}: start a new run (--fresh)")
    ctx.objects.put_bytes(payload.key, data)
    log.warning("%s: raw payload was missing; cut again from the source at its recorded cursor "
                "range (%d rows, same content)", where, payload.rows)
    return data


def read_frame(ctx: RunContext, shard: int, batch: int, key: str, *,
                sha256: str | None = None, payload: RawPayload | None = None) -> pd.DataFrame:
    """A stored batch as a DataFrame, checked against `sha256` when given. With the raw
    `payload` it describes, a pointer or a missing copy is cut again from the source.
    Arrow -> pandas runs in the calling thread: Arrow's pool cost more CPU and more wall
    time for batches of 2,000 to 200,000 rows (workers and processes are the parallelism)."""
    if sha256 is not None and (cached := frames.pop(key, sha256)) is not None:
        if ctx.shard_frames is not None:  # the fetch's Batch (etl.runtime.raw.land)
            return ctx.shard_frames.frame(cached.table, cached.whole, cached.begin)
        return cached.table.to_pandas(use_threads=False)
    if payload is not None and is_pointer(payload):
        return recut(ctx.pipeline.source, ctx.plan, payload,
                     where=_where(ctx, shard, batch)).to_pandas(use_threads=False)
    data = _raw_bytes(ctx, payload) if payload is not None else _read_bytes(ctx, shard, batch, key)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise BatchError(f"{_where(ctx, shard, batch, key)}: content does not match its "
                         "recorded sha256 (corrupt or overwritten)")
    try:
        return from_parquet_bytes(data)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a malformed batch
        raise BatchError(f"{_where(ctx, shard, batch, key)}: cannot read batch: {exc}") from exc


def clean(ctx: RunContext, shard: int, batch: int, *,
          fence: Fence | None = None) -> tuple[int, int] | None:
    """Apply the pipeline's stages to a fetched batch; stage clean rows and quarantine bad
    ones. Returns (clean rows, quarantined rows), or None when there was nothing to do."""
    state = ctx.state
    if state.is_done(task_fingerprint("clean", ctx.run_id, shard, batch)):
        return None
    payload = state.get_payload(ctx.run_id, shard, batch)
    if payload is None:  # not fetched (shard empty, or a stale message): whoever fetches
        log.debug("%s: nothing fetched, clean skipped", _where(ctx, shard, batch))
        return None      # this batch sends its own clean
    frame = read_frame(ctx, shard, batch, payload.key, sha256=payload.sha256, payload=payload)
    clean_rows, quarantined = clean_frame(ctx, shard, batch, frame, key=payload.key)
    # Parquet bytes where they are stored (a staged copy) or loaded as they are (a Parquet
    # sink); a sink that takes frames, loaded in this process, gets the frame, checked only
    # for what the encode would refuse (its conversion to Arrow: the write, ~6 ms of a
    # 17,000-row batch, is skipped)
    encoded = ctx.staged_copies or isinstance(ctx.pipeline.sink, ParquetWriter)
    try:
        table = frame_to_arrow(clean_rows) if encoded else arrow_checked(clean_rows)
        staged = to_parquet_bytes(table) if table is not None else None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise BatchError(f"{_where(ctx, shard, batch, payload.key)}: the cleaned batch cannot be "
                         f"written as Parquet ({exc}); a column mixes types: end the stages with "
                         "CastSchema to give it one") from exc
    if ctx.staged_copies:
        assert staged is not None
        ctx.objects.put_bytes(staged_key(ctx.run_id, shard, batch), staged)
    else:  # the load follows in this process; elsewhere it cleans the raw rows again
        held = None if encoded else clean_rows  # bytes for a Parquet sink, else the frame
        weight = len(staged) if staged is not None else int(clean_rows.memory_usage().sum())
        cleaned.put(staged_key(ctx.run_id, shard, batch), ctx.run_id,
                    (staged, held, len(clean_rows)), rows=weight)
        _keep_keys(ctx, shard, batch, table)
    # a few rejected rows ride in the commit below; more are an object written first
    kept = keep_quarantine(ctx.objects, ctx.run_id, shard, batch, quarantined)
    crash_point("clean.after_stage")
    state.complete_stage(ctx.run_id, shard, batch, "clean",
                         {"rows_cleaned": len(clean_rows), "rows_quarantined": len(quarantined)},
                         fence=fence, release=True, quarantine=kept)
    return len(clean_rows), len(quarantined)


def _keep_keys(ctx: RunContext, shard: int, batch: int, table: pa.Table | None) -> None:
    """Keep the key columns of a batch about to be loaded from this process, for the
    run's key audit (etl.runtime.loaded_keys), when the run keeps them. The only batch of
    its shard keeps none (no key of it can be in another batch): what it leaves is an
    empty table that says it was loaded here."""
    key = ctx.pipeline.key
    if ctx.loaded_keys is None or table is None or not key or not set(key) <= set(table.column_names):
        return
    keys = table.select(list(key))
    if batch == 0:
        checkpoint = ctx.state.get_checkpoint(ctx.run_id, shard)
        if checkpoint is not None and checkpoint.fetch_done and checkpoint.batches_fetched == 1:
            keys = keys.schema.empty_table()
    ctx.loaded_keys.stage(ctx.run_id, shard, batch, keys)


def clean_frame(ctx: RunContext, shard: int, batch: int, frame: pd.DataFrame, *, key: str,
                rows: Sequence[int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean rows of a raw payload: (clean rows, quarantined rows). `rows` are their
    ordinals in the payload (default: all of it, in order); each quarantined row keeps its
    ordinal in ROW_COLUMN when the stages kept row identity, so it can be replayed."""
    ordinals = np.arange(len(frame)) if rows is None else np.asarray(rows, dtype=np.int64)
    frame = frame.set_axis(pd.Index(ordinals + ROW_OFFSET))
    unparseable: pd.DataFrame | None = None  # (an empty frame built per batch: ~0.1 ms)
    if SOURCE_ERROR_COLUMN in frame.columns:
        broken = frame[SOURCE_ERROR_COLUMN].notna()
        kept = [c for c in SOURCE_COLUMNS if c in frame.columns]  # reason, line number, whole text
        unparseable = frame.loc[broken, kept].rename(
            columns={SOURCE_ERROR_COLUMN: REASON_COLUMN}).assign(**{STAGE_COLUMN: "source"})
        if SOURCE_LINE_COLUMN in unparseable.columns:  # float64 in pandas (null in good rows)
            unparseable[SOURCE_LINE_COLUMN] = unparseable[SOURCE_LINE_COLUMN].astype("Int64")
        frame = frame.loc[~broken].drop(columns=kept)
    frame = _check_schema(ctx, shard, batch, frame, key)
    try:
        result = run_stages(frame, ctx.pipeline.stages)
    except Exception as exc:  # noqa: BLE001 - named for the batch; retried per the policy
        raise BatchError(f"{_where(ctx, shard, batch, key)}: {exc}") from exc
    clean = result.clean
    if len(clean.columns) or len(clean):
        problem = missing_key(ctx.pipeline.key, ctx.pipeline.stages, frame, list(clean.columns))
        if problem:
            raise BatchError(f"{_where(ctx, shard, batch, key)}: {problem}")
    if isinstance(ctx.pipeline.sink, Sequenced):  # it keeps the newest row per key
        labels = result.clean_labels
        ordinals = (np.asarray(labels, dtype=np.int64) - ROW_OFFSET
                    if result.lineage and labels is not None else np.arange(len(clean)))
        clean = with_sequence(clean, stamp=ctx.seq_stamp, shard=shard, batch=batch, rows=ordinals)
    staged_out = result.quarantined
    # plain integers when every row has its ordinal (as etl.runtime.quarantine stores
    # them), else nullable ones, all null
    staged_out[ROW_COLUMN] = (np.asarray(staged_out.index, dtype=np.int64) - ROW_OFFSET
                              if result.lineage else pd.array([None] * len(staged_out), dtype="Int64"))
    if unparseable is not None and len(unparseable):
        unparseable[ROW_COLUMN] = pd.array(unparseable.index - ROW_OFFSET, dtype="Int64")
        staged_out = pd.concat([unparseable, staged_out])
    return clean, staged_out.reset_index(drop=True)


def _check_schema(ctx: RunContext, shard: int, batch: int, frame: pd.DataFrame,
                  key: str) -> pd.DataFrame:
    """Report a drifted batch once (TaskErrorLog, stage "schema") and apply the policy. The
    expectation is the pipeline's declared schema, else the one the run learned (etl.drift)."""
    expected = ctx.pipeline.expected_schema or ctx.run.params.get("expected_schema")
    if not expected:
        return frame
    drift = compare(frame, expected)
    if not drift:
        return frame
    noted = task_fingerprint("drift", ctx.run_id, shard, batch)
    if not ctx.state.is_done(noted):
        ctx.state.log_error(ErrorRecord(
            run_id=ctx.run_id, stage="schema", error_type="SchemaDrift", shard=shard,
            batch=batch, message=drift.describe(),
            context={"policy": ctx.pipeline.schema_drift, "object": key,
                     "expected_from": ("pipeline" if ctx.pipeline.expected_schema
                                       else f"run {ctx.run.params.get('schema_from')}"),
                     **drift.to_dict()}))
        ctx.state.mark_done(noted, "drift", ctx.run_id)
        # said once per run, with the count of drifted batches, when it completes (runs.py)
        log.info("%s: schema drift (%s), policy %s", _where(ctx, shard, batch), drift.describe(),
                 ctx.pipeline.schema_drift)
    return apply_policy(frame, drift, ctx.pipeline.schema_drift, where=_where(ctx, shard, batch, key))


def _staged(ctx: RunContext, shard: int, batch: int,
            key: str) -> tuple[bytes | None, pd.DataFrame | None, bool, int | None]:
    """A cleaned batch: its Parquet bytes, or (bytes None) its frame when this process
    cleaned it for a sink that takes frames; whether this process cleaned it (in its clean
    step, or again here), so that its kept keys are the batch's; and its rows when its clean
    step counted them here (else None). A run that keeps no staged copies hands the batch
    from clean to load in memory; a load in another process (after a crash or a restart)
    cleans the raw rows again: stages are pure, so the rows are those the clean counted."""
    if not ctx.staged_copies and (held := cleaned.pop(key, ctx.run_id)) is not None:
        data, frame, rows = held
        return data, frame, True, rows
    if ctx.staged_copies:
        try:
            return ctx.objects.get_bytes(key), None, False, None
        except ObjectNotFound:
            pass
    return _staged_bytes(ctx, shard, batch, key), None, not ctx.staged_copies, None


def _staged_bytes(ctx: RunContext, shard: int, batch: int, key: str) -> bytes:
    """A cleaned batch's bytes made again from the raw payload (which may itself be cut
    again): stages are pure. A staged copy that was lost is written again."""
    payload = ctx.state.get_payload(ctx.run_id, shard, batch)
    if payload is None:
        raise BatchError(f"{_where(ctx, shard, batch, key)}: object is missing and the batch "
                         "has no raw payload to clean again")
    frame = read_frame(ctx, shard, batch, payload.key, sha256=payload.sha256, payload=payload)
    clean_rows, _ = clean_frame(ctx, shard, batch, frame, key=payload.key)
    table = frame_to_arrow(clean_rows)
    data = to_parquet_bytes(table)
    if ctx.staged_copies:
        ctx.objects.put_bytes(key, data)
        log.warning("%s: staged batch was missing; cleaned again from its raw payload",
                    _where(ctx, shard, batch, key))
    else:  # loaded from this process: its keys are those of the file
        _keep_keys(ctx, shard, batch, table)
        log.debug("%s: cleaned again from its raw payload for the load", _where(ctx, shard, batch))
    return data


def load(ctx: RunContext, shard: int, batch: int, *, fence: Fence | None = None,
         queue: Callable[[str], ContextManager[object]] | None = None) -> int | None:
    """Write a cleaned batch to the sink (idempotently). Returns rows written, or None when
    there was nothing to do. `queue(name)` holds a lease of that name, waiting its turn: a
    sink whose commits race (SerialCommits) is loaded one batch at a time through it."""
    state = ctx.state
    if state.is_done(task_fingerprint("load", ctx.run_id, shard, batch)):
        return None
    if not state.is_done(task_fingerprint("clean", ctx.run_id, shard, batch)):
        log.debug("%s: not cleaned, load skipped", _where(ctx, shard, batch))
        return None  # the clean of this batch, when it happens, sends its own load
    key = staged_key(ctx.run_id, shard, batch)
    sink = ctx.pipeline.sink
    data, frame, held, rows = _staged(ctx, shard, batch, key)
    if isinstance(sink, ParquetWriter):  # a Parquet sink takes the staged file as it is
        assert data is not None  # its clean encoded the batch (clean: `encoded`)
        # counted by its clean: the sink need not read the footer (if its method takes it)
        told = {"rows": rows} if rows is not None and takes_rows(sink) else {}
        written = sink.write_parquet(data, run_id=ctx.run_id, shard=shard, batch=batch, **told)
        if ctx.loaded_keys is not None:  # the keys its clean kept are those of the file
            (ctx.loaded_keys.loaded if held else ctx.loaded_keys.unstaged)(ctx.run_id, shard, batch)
    else:
        try:
            if frame is None:
                assert data is not None
                frame = from_parquet_bytes(data)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a malformed batch
            raise BatchError(f"{_where(ctx, shard, batch, key)}: cannot read batch: {exc}") from exc
        scope = sink.commit_scope() if isinstance(sink, SerialCommits) else None
        with (queue(f"commit:{scope}") if scope and queue else nullcontext()):
            written = sink.write_batch(frame, run_id=ctx.run_id, shard=shard, batch=batch)
    crash_point("load.after_sink")
    state.complete_stage(ctx.run_id, shard, batch, "load", {"rows_loaded": written}, fence=fence,
                         release=True)
    crash_point("load.after_count")
    return written
