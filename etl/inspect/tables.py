"""The tables an Inspector returns: their columns, in order, and how they are built, so an
empty result still has the right columns and dtypes (a notebook cell never breaks on a run
with no errors yet)."""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from etl.core.logs import without_where
from etl.core.urls import mask_url
from etl.stores.state import Checkpoint

#: Stages that write a TaskDedup entry per batch, in pipeline order.
LEDGER_STAGES = ("fetch", "clean", "load")

#: Columns of `Inspector.shards`, in order (also the columns of an empty frame).
SHARD_COLUMNS = [
    "shard", "status", "cursor", "fetch_done", "batches_fetched", "batches_cleaned",
    "batches_loaded", "rows_fetched", "rows_cleaned", "rows_quarantined", "rows_loaded",
    "share_done", "updated_at", "last_error",
]
PAYLOAD_COLUMNS = ["shard", "batch", "rows", "bytes", "sha256", "cursor_start", "cursor_end",
                   "key", "created_at"]
ERROR_COLUMNS = ["at", "run_id", "stage", "shard", "batch", "error_type", "message",
                 "traceback", "context"]
RUN_COLUMNS = ["run_id", "pipeline", "plan", "shards", "status", "batch_size", "source_rows",
               "rows_loaded", "rows_quarantined", "took_seconds", "created_at", "updated_at"]
TASK_COLUMNS = ["job_id", "function", "stage", "status", "shard", "batch", "result", "error",
                "error_type", "retry_count", "worker_id", "duration", "created_at",
                "completed_at"]


#: Column dtypes that pandas would guess wrongly: cursors and results keep their own Python
#: values (an int cursor next to None must not turn into a float), optional ints stay ints.
_DTYPES = {"cursor": object, "cursor_start": object, "cursor_end": object, "result": object,
           "context": object, "shard": "Int64", "batch": "Int64"}


def table_of(rows: Iterable[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A DataFrame of `rows` with exactly `columns`, also when there are no rows."""
    records = list(rows)
    return pd.DataFrame({name: pd.Series([r.get(name) for r in records], dtype=_DTYPES.get(name))
                         for name in columns}, columns=columns)


def share_done(checkpoint: Checkpoint, expected_rows: float | None) -> float:
    """Estimated share (0..1) of a shard's work that is loaded.

    1.0 once the shard is complete. While it is fetched to the end, the share of its fetched
    batches that are loaded. Before that, the loaded share of fetched batches times the
    share of the shard fetched so far, estimated from `expected_rows` (the run's source rows
    over its shards: hash and fitted range plans split rows about evenly); NaN when that is
    unknown. An estimate for a progress bar, never used to decide anything.
    """
    if checkpoint.complete:
        return 1.0
    fetched = checkpoint.batches_fetched
    loaded = checkpoint.batches_loaded / fetched if fetched else 0.0
    if checkpoint.fetch_done:
        return loaded if fetched else 1.0
    if not expected_rows:
        return float("nan")
    return min(loaded * min(checkpoint.rows_fetched / expected_rows, 1.0), 0.99)


def shown_error(checkpoint: Checkpoint) -> str | None:
    """The last error to show beside a shard: none once the shard is done (an error a retry
    or a resume got past is history, in TaskErrorLog), else its cause, without the run /
    shard / batch prefix a batch error's message starts with, password masked."""
    if checkpoint.complete or not checkpoint.last_error:
        return None
    return without_where(mask_url(checkpoint.last_error))


__all__ = ["ERROR_COLUMNS", "LEDGER_STAGES", "PAYLOAD_COLUMNS", "RUN_COLUMNS", "SHARD_COLUMNS",
           "TASK_COLUMNS", "share_done", "shown_error", "table_of"]
