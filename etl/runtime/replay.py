"""Re-driving quarantined rows after a fix, exactly once.

A replay is a run of its own, `<run>-replay<g>`: generation 1 takes the rows the original
run quarantined, generation g+1 the rows generation g quarantined again or left out (rows
of a stage the replay was not asked for stay in its quarantine, carried as they were). Each quarantined
row names its place in the raw payload (ROW_COLUMN), so the replay cleans the row as it was
fetched, with the pipeline as it is now (fixed), and loads what passes under the replay's
own run id. Per batch it records a pointer, counts clean and load exactly once through the
state store and writes the sink idempotently, like any run: killed at any point, running
the same command again finishes it, and a finished generation is never loaded twice.

A line the source could not read (stage "source") keeps its whole raw text in the quarantine
(SOURCE_TEXT_COLUMN); a replay reads that text again with the source options of the fixed
pipeline (a Reparsable source: a FileSource whose delimiter, quotechar, encoding or
column_types was fixed) and cleans what it reads like any row. It reads the quarantined
rows only (etl.runtime.quarantine), never the raw payload, so it also works when the fixed
options changed the source's fingerprint. A raw row that was such a line (rejected by a
stage in an earlier replay) is read again the same way.

Rows rejected as duplicates (by a stage named "dedupe") and lines the source could not read
(stage "source") are not replayed unless asked for by `stages` (`--stage source`): the first
copy of a duplicate is loaded already, and a line reads no better until a source option is
fixed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from etl.runtime.batches import clean_frame, read_frame
from etl.runtime.quarantine import ROW_COLUMN, keep as keep_quarantine, read as read_quarantine
from etl.runtime.raw import is_pointer
from etl.runtime.context import RunContext
from etl.core.errors import ConfigError
from etl.core.faults import crash_point
from etl.core.names import quarantine_key, replay_run_id, task_fingerprint
from etl.core.statuses import RunStatus
from etl.sources.base import (SOURCE_COLUMNS, SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN,
                              SOURCE_TEXT_COLUMN, Reparsable)
from etl.stores.state import RawPayload, RunRecord, StateStore
from stages.base import STAGE_COLUMN

log = logging.getLogger(__name__)

NOT_REPLAYED = ("dedupe", "source")


@dataclass
class ReplayResult:
    run_id: str
    generation: int
    rows_replayed: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_skipped: int = 0  # quarantined rows left out (stage filter, or no known raw row)
    batches_done_before: int = 0


def _next_generation(state: StateStore, original: RunRecord) -> tuple[int, str]:
    """The generation to work on (an unfinished one first) and the run it replays from."""
    generation = 1
    while (run := state.get_run(replay_run_id(original.run_id, generation))) is not None:
        if run.status != RunStatus.COMPLETED:
            return generation, run.params["replay_of"]
        generation += 1
    source = replay_run_id(original.run_id, generation - 1) if generation > 1 else original.run_id
    return generation, source


def open_replay(state: StateStore, original: RunRecord, *, spec: str,
                stages: Sequence[str] | None) -> RunRecord:
    """The replay run to work on, created if needed."""
    if original.params.get("replay_of"):
        raise ConfigError(f"{original.run_id} is a replay; replay its original run instead")
    if original.status != RunStatus.COMPLETED:
        raise ConfigError(f"run {original.run_id} is not complete; finish it before replaying "
                          "its quarantine")
    generation, source = _next_generation(state, original)
    run_id = replay_run_id(original.run_id, generation)
    run = state.get_run(run_id)
    if run is None:
        params = {**original.params, "pipeline_spec": spec, "replay_of": source,
                  "original_run": original.run_id, "generation": generation,
                  "replay_stages": list(stages) if stages else None}
        params.pop("source_fingerprint", None)
        run = RunRecord(run_id=run_id, pipeline=original.pipeline,
                        plan=f"replay of {original.plan}", shards=original.shards, params=params)
        if not state.create_run(run):
            run = state.get_run(run_id) or run
        state.init_checkpoints(run_id, run.shards)
    return run


def _wanted(stages: Sequence[str] | None) -> Callable[[str], bool]:
    if stages:
        chosen = set(stages)
        return lambda name: name in chosen
    return lambda name: name not in NOT_REPLAYED


def replay(ctx: RunContext, original: RunRecord, *,
           on_batch: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Work the replay run of `ctx` (made by open_replay) to its end."""
    run = ctx.run
    state, objects = ctx.state, ctx.objects
    wanted = _wanted(run.params.get("replay_stages"))
    result = ReplayResult(run.run_id, int(run.params["generation"]))
    pointers = state.list_payloads(original.run_id)
    for index, pointer in enumerate(pointers):
        shard, batch = pointer.shard, pointer.batch
        if on_batch:
            on_batch(index, len(pointers))
        if state.is_done(task_fingerprint("load", run.run_id, shard, batch)):
            result.batches_done_before += 1
            continue
        source_key = quarantine_key(run.params["replay_of"], shard, batch)
        rejected = read_quarantine(state, objects, run.params["replay_of"], shard, batch)
        rows: list[int] = []
        lines: dict[int, tuple[str, int | None]] = {}  # ordinal -> (raw text, line number)
        carried = None  # rows left out: kept in this generation's quarantine for the next
        if rejected is not None and len(rejected):
            chosen = rejected[rejected[STAGE_COLUMN].map(wanted)]
            known = (chosen[ROW_COLUMN].notna() if ROW_COLUMN in chosen.columns
                     else pd.Series(False, index=chosen.index))  # quarantined before rows were kept
            if isinstance(ctx.pipeline.source, Reparsable) and SOURCE_TEXT_COLUMN in chosen.columns:
                lines = _unread_lines(chosen[known])
            rows = sorted(int(r) for r in chosen.loc[known, ROW_COLUMN])
            result.rows_skipped += len(rejected) - len(rows)
            carried = rejected.drop(index=chosen.index[known.to_numpy()])
        digest = hashlib.sha256(repr(rows).encode()).hexdigest()
        state.record_fetch(RawPayload(run_id=run.run_id, shard=shard, batch=batch, key=source_key,
                                      bytes=0, sha256=digest, rows=len(rows), cursor_start=None,
                                      cursor_end=None), exhausted=False)
        clean, quarantined = (_clean(ctx, original, shard, batch, rows, lines) if rows
                              else (None, None))
        kept = [f for f in (quarantined, carried) if f is not None and len(f)]
        stored = None
        if kept:
            # A row this generation left out (its stage not asked for) stays quarantined
            # here, so a later `--stage source` or `--stage dedupe` replay still finds it.
            stored = keep_quarantine(objects, run.run_id, shard, batch, kept[0] if len(kept) == 1
                                     else pd.concat(kept, ignore_index=True))
        cleaned = 0 if clean is None else len(clean)
        again = 0 if quarantined is None else len(quarantined)
        state.complete_stage(run.run_id, shard, batch, "clean",
                             {"rows_cleaned": cleaned, "rows_quarantined": again},
                             quarantine=stored)
        written = 0
        if cleaned:
            written = ctx.pipeline.sink.write_batch(clean, run_id=run.run_id, shard=shard, batch=batch)
        crash_point("replay.after_sink")
        state.complete_stage(run.run_id, shard, batch, "load", {"rows_loaded": written})
        result.rows_replayed += len(rows)
        result.rows_loaded += written
        result.rows_quarantined += again
    for checkpoint in state.list_checkpoints(run.run_id):
        state.finish_fetch(run.run_id, checkpoint.shard, checkpoint.batches_fetched)
    state.set_run_status(run.run_id, RunStatus.COMPLETED)
    return result


def _unread_lines(rows: pd.DataFrame) -> dict[int, tuple[str, int | None]]:
    """Ordinal -> (raw text, line number) of the `rows` that keep a source line's text."""
    if SOURCE_TEXT_COLUMN not in rows.columns:
        return {}
    rows = rows[rows[SOURCE_TEXT_COLUMN].notna()]
    numbers = (rows[SOURCE_LINE_COLUMN] if SOURCE_LINE_COLUMN in rows.columns
               else pd.Series(None, index=rows.index))
    return {int(r): (str(text), None if pd.isna(n) else int(n))
            for r, text, n in zip(rows[ROW_COLUMN], rows[SOURCE_TEXT_COLUMN], numbers)}


def _clean(ctx: RunContext, original: RunRecord, shard: int, batch: int, rows: list[int],  # type: ignore[no-untyped-def]
           lines: dict[int, tuple[str, int | None]]):
    """Clean the chosen rows of a batch: raw rows from the payload, and lines the source
    could not read from their kept text, read again with the fixed source's options."""
    pointer = ctx.state.get_payload(original.run_id, shard, batch)
    assert pointer is not None
    others = [r for r in rows if r not in lines]
    pieces, ordinals = [], []
    if others:
        raw = read_frame(ctx, shard, batch, pointer.key, sha256=pointer.sha256,
                         payload=pointer if is_pointer(pointer) else None).iloc[others]
        raw = raw.reset_index(drop=True)
        unread = (raw[SOURCE_ERROR_COLUMN].notna().to_numpy()
                  if SOURCE_ERROR_COLUMN in raw.columns and SOURCE_TEXT_COLUMN in raw.columns
                  else np.zeros(len(raw), dtype=bool))
        if unread.any() and isinstance(ctx.pipeline.source, Reparsable):
            # a raw row that is a line the source could not read: its text, read again
            lines = {**lines, **_unread_lines(raw.loc[unread].assign(
                **{ROW_COLUMN: [others[i] for i in np.flatnonzero(unread)]}))}
            keep = ~unread
            raw = raw.loc[keep].drop(columns=[c for c in SOURCE_COLUMNS if c in raw.columns])
            others = [r for r, k in zip(others, keep) if k]
        pieces.append(raw)
        ordinals.extend(others)
    if lines:
        order = sorted(lines)
        read_again = ctx.pipeline.source.reparse([lines[r][0] for r in order],
                                                 [lines[r][1] for r in order]).to_pandas()
        log.info("replay %s shard %d batch %d: %d line(s) the source could not read, read again "
                 "with %s", ctx.run_id, shard, batch, len(order), ctx.pipeline.source.describe())
        pieces.append(read_again)
        ordinals.extend(order)
    frame = pieces[0] if len(pieces) == 1 else pd.concat(pieces, ignore_index=True)
    by_row = np.argsort(np.asarray(ordinals, dtype=np.int64), kind="stable")
    frame = frame.iloc[by_row].reset_index(drop=True)
    clean, quarantined = clean_frame(ctx, shard, batch, frame, key=pointer.key,
                                     rows=[ordinals[i] for i in by_row])
    if lines and len(quarantined) and ROW_COLUMN in quarantined.columns:
        # a line read again and rejected by a stage keeps its text: the next replay reads it
        # from there, not from a raw payload cut with the source options of the first run
        kept = quarantined[ROW_COLUMN].map(lambda r: lines.get(int(r)) if pd.notna(r) else None)
        for column, part in ((SOURCE_TEXT_COLUMN, 0), (SOURCE_LINE_COLUMN, 1)):
            found = kept.map(lambda found: None if found is None else found[part])
            if column in quarantined.columns:
                found = quarantined[column].where(quarantined[column].notna(), found)
            quarantined[column] = found.astype("string" if part == 0 else "Int64")
    return clean, quarantined


__all__ = ["ReplayResult", "open_replay", "replay"]
