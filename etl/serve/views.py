"""What the API shows of runs, read through the Inspector (etl.inspect): status and
progress, the result summary, shards, errors, quarantine counts, and from the broker the
dead letters and queue gauges. Plain JSON-able dicts; every string is masked again by the
response class (etl.serve.app), whatever a store kept."""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from etl.core.config import Settings
from etl.core.errors import ConfigError
from etl.inspect import Inspector
from etl.stores.state import RunRecord


class NotFound(ConfigError):
    """No run with that id (or no state store yet)."""


def inspector(root: Path) -> Inspector | None:
    """An Inspector of the project at `root`, or None while its state store does not
    exist yet (no run was ever started there)."""
    try:
        return Inspector.from_settings(root, search_parents=False)
    except ConfigError as exc:
        if str(exc).startswith("no state store at"):  # etl.inspect.project.require_sqlite_file
            return None
        raise


def records(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame as JSON records: NaN and NA as null, times as ISO text."""
    if frame is None or len(frame) == 0:
        return []
    return json.loads(frame.to_json(orient="records", date_format="iso", default_handler=str))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def get_run(ins: Inspector | None, run_id: str) -> RunRecord:
    run = ins.state.get_run(run_id) if ins is not None else None
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def run_row(run: RunRecord) -> dict[str, Any]:
    return {"run_id": run.run_id, "pipeline": run.pipeline, "plan": run.plan,
            "shards": run.shards, "status": str(run.status),
            "source_rows": run.params.get("source_rows"),
            "pipeline_spec": run.params.get("pipeline_spec"),
            "window": run.params.get("window"),
            "created_at": _iso(run.created_at), "updated_at": _iso(run.updated_at)}


def list_runs(ins: Inspector | None, *, limit: int, offset: int,
              pipeline: str | None) -> list[dict[str, Any]]:
    """Runs newest first, `limit` of them after the first `offset`."""
    if ins is None:
        return []
    runs = ins.state.list_runs(pipeline=pipeline, limit=offset + limit)
    return [run_row(r) for r in runs[offset:offset + limit]]


def shards(ins: Inspector | None, run_id: str) -> list[dict[str, Any]]:
    get_run(ins, run_id)
    rows = records(ins.shards(run_id))  # type: ignore[union-attr]
    for row in rows:
        share = row.get("share_done")
        row["share_done"] = None if share is None or math.isnan(share) else share
    return rows


def status(ins: Inspector | None, run_id: str) -> dict[str, Any]:
    """Status, progress, per-shard state, last error and timings of one run."""
    run = get_run(ins, run_id)
    assert ins is not None
    per_shard = shards(ins, run_id)
    total = run.params.get("source_rows")
    loaded = sum(s["rows_loaded"] for s in per_shard)
    quarantined = sum(s["rows_quarantined"] for s in per_shard)
    done = sum(s["status"] == "done" for s in per_shard)
    if run.status == "completed":
        share = 1.0
    elif total:
        share = min((loaded + quarantined) / total, 0.99)
    else:
        known = [s["share_done"] for s in per_shard if s["share_done"] is not None]
        share = sum(known) / run.shards if known and run.shards else 0.0
    errors = ins.state.list_errors(run_id, limit=1)
    last_error = error_row(errors[0]) if errors else None
    updated = max([run.updated_at, *(c.updated_at for c in ins.state.list_checkpoints(run_id))])
    return {"task_id": run.run_id, **run_row(run),
            "progress": {"rows_done": loaded + quarantined, "rows_total": total,
                         "rows_loaded": loaded, "rows_quarantined": quarantined,
                         "shards_done": done, "shards_total": run.shards,
                         "share": round(share, 4)},
            "shard_states": [{k: s.get(k) for k in (
                "shard", "status", "share_done", "rows_fetched", "rows_loaded",
                "rows_quarantined", "batches_fetched", "batches_loaded", "last_error")}
                for s in per_shard],
            "last_error": last_error,
            "timings": {"created_at": _iso(run.created_at), "updated_at": _iso(updated),
                        "elapsed_seconds": round((updated - run.created_at).total_seconds(), 3)}}


def error_row(error: Any) -> dict[str, Any]:
    return {"at": _iso(error.at), "stage": error.stage, "shard": error.shard,
            "batch": error.batch, "error_type": error.error_type, "message": error.message,
            "traceback": error.traceback, "context": error.context}


def errors(ins: Inspector | None, run_id: str, *, limit: int) -> list[dict[str, Any]]:
    get_run(ins, run_id)
    return [error_row(e) for e in ins.state.list_errors(run_id, limit=limit)]  # type: ignore[union-attr]


#: Quarantine counts by (run id, batches cleaned so far): the dashboard asks every second,
#: and reading a run's quarantined rows again is only worth it once more were cleaned.
_QUARANTINE_CACHE: "OrderedDict[tuple[str, int], list[dict[str, Any]]]" = OrderedDict()
_QUARANTINE_LOCK = threading.Lock()
_QUARANTINE_KEEP = 64


def quarantine_counts(ins: Inspector | None, run_id: str) -> list[dict[str, Any]]:
    """Quarantined rows of the run counted by stage and reason, most first."""
    get_run(ins, run_id)
    assert ins is not None
    key = (run_id, sum(c.batches_cleaned for c in ins.state.list_checkpoints(run_id)))
    with _QUARANTINE_LOCK:
        if key in _QUARANTINE_CACHE:
            return _QUARANTINE_CACHE[key]
    counts = _count_quarantine(ins, run_id)
    with _QUARANTINE_LOCK:
        _QUARANTINE_CACHE[key] = counts
        while len(_QUARANTINE_CACHE) > _QUARANTINE_KEEP:
            _QUARANTINE_CACHE.popitem(last=False)
    return counts


def _count_quarantine(ins: Inspector, run_id: str) -> list[dict[str, Any]]:
    frame = ins.quarantine(run_id)
    if len(frame) == 0:
        return []
    counts = (frame.groupby(["_stage", "_reason"], dropna=False).size()
              .sort_values(ascending=False))
    return [{"stage": None if stage != stage else str(stage),
             "reason": None if reason != reason else str(reason), "rows": int(rows)}
            for (stage, reason), rows in counts.items()]


def result(ins: Inspector | None, run_id: str, outcome: dict[str, Any] | None) -> dict[str, Any]:
    """The summary of a completed run: rows in, loaded, quarantined, drift, time, rows/s.
    `outcome` is what the server's child said at its end (exact time), when it ran it."""
    run = get_run(ins, run_id)
    assert ins is not None
    summary = ins.summary(run_id)
    drifted = sum(1 for e in ins.state.list_errors(run_id, limit=100_000) if e.stage == "schema")
    checkpoints = ins.state.list_checkpoints(run_id)
    ended = max([run.updated_at, *(c.updated_at for c in checkpoints)])
    elapsed = (outcome or {}).get("elapsed") or (ended - run.created_at).total_seconds()
    loaded = summary["rows_loaded"]
    return {"task_id": run.run_id, "run_id": run.run_id, "pipeline": run.pipeline,
            "status": str(run.status), "rows_in": summary["rows_fetched"],
            "rows_loaded": loaded, "rows_quarantined": summary["rows_quarantined"],
            "rows_added": max(0, summary["rows_cleaned"] + summary["rows_quarantined"]
                              - summary["rows_fetched"]),
            "batches_loaded": summary["batches_loaded"], "batches_drifted": drifted,
            "shards": summary["shards"], "shards_done": summary["shards_done"],
            "seconds": round(elapsed, 3),
            "rows_per_second": round(loaded / elapsed, 1) if elapsed > 0 else None,
            "keys_repeated": (outcome or {}).get("keys_repeated"),
            "created_at": _iso(run.created_at), "ended_at": _iso(ended)}


def queue_of(settings: Settings, run: RunRecord, allowed: tuple[str, ...]) -> str:
    """The queue of the run's pipeline; only an allow-listed pipeline is imported to ask."""
    spec = run.params.get("pipeline_spec")
    if spec in allowed:
        from etl.pipeline import load_pipeline

        try:
            return load_pipeline(spec).queue_or(settings.queue)
        except ConfigError:
            pass
    return settings.queue


def dead_letters(settings: Settings, queue: str, run_id: str | None, *,
                 limit: int) -> list[dict[str, Any]] | None:
    """Dead letters of `queue` (of one run when given), oldest first; None without a broker."""
    from etl.brokers import is_embedded, open_broker, queues_of
    from etl.brokers.base import of_run

    if is_embedded(settings.broker_url):
        return None
    broker = open_broker(settings.broker_url)
    try:
        letters = queues_of(broker).dead_letters(queue, limit=limit,
                                                 match=of_run(run_id) if run_id else None)
    finally:
        broker.close()
    rows = []
    for letter in letters:
        m = letter.message
        args = list(m.args) + [None] * 3
        error = (m.options.get("traceback") or "").strip().splitlines()[-1:] or [""]
        rows.append({"message_id": m.message_id, "actor": m.actor_name, "run_id": args[0],
                     "shard": args[1], "batch": args[2],
                     "retries": m.options.get("retries", 0),
                     "dead_since": (datetime.fromtimestamp(letter.dead_since, timezone.utc).isoformat()
                                    if letter.dead_since else None),
                     "error": error[0][-400:]})
    return rows


def explain_letters(ins: Inspector | None, run_id: str, letters: list[dict[str, Any]]) -> None:
    """Fill the error of dead letters whose message kept no traceback from the run's
    TaskErrorLog entry of the same stage, shard and batch (the final failure's)."""
    from etl.core.names import stage_of_actor

    if ins is None or all(letter["error"] for letter in letters):
        return
    logged = {(e.stage, e.shard, e.batch): f"{e.error_type}: {e.message}"
              for e in reversed(ins.state.list_errors(run_id, limit=1000))}
    for letter in letters:
        if not letter["error"]:
            key = (stage_of_actor(letter["actor"]), letter["shard"], letter["batch"])
            letter["error"] = logged.get(key, "")[-400:]


def queue_gauges(settings: Settings, names: list[str]) -> list[dict[str, Any]] | None:
    """Ready, delayed, in flight, dead letters and consumers of each queue; None without a
    broker (embedded mode: the queues live inside the run's process)."""
    from etl.brokers import is_embedded, open_broker, queues_of

    if is_embedded(settings.broker_url):
        return None
    broker = open_broker(settings.broker_url)
    try:
        queues = queues_of(broker)
        counts = [queues.counts(name) for name in dict.fromkeys(names)]
    finally:
        broker.close()
    return [{"queue": c.queue, "ready": c.ready, "delayed": c.delayed, "in_flight": c.in_flight,
             "dead_letters": c.dead, "consumers": c.consumers} for c in counts]


__all__ = ["NotFound", "dead_letters", "errors", "explain_letters", "get_run", "inspector", "list_runs",
           "queue_gauges", "queue_of", "quarantine_counts", "records", "result", "run_row",
           "shards", "status"]
