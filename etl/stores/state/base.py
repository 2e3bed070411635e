"""The state store: where runs, checkpoints, the dedup ledger, leases, errors, raw payload
pointers and small quarantines live.

One small interface, two implementations (SQLite embedded default, MongoDB for production).
Every write here is idempotent: a message redelivered after a crash calls the same method
with the same arguments, and the store ends in the same state as if it had been called once.
That, with deterministic object keys and upserting sinks, is what makes effects exactly once.

Collection / table names are part of the product (notebooks, dashboards and operators
query them by name): TaskCheckpoint, TaskDedup, PendingTasks,
TaskErrorLog, RawPayload, QuarantinedRows (a batch's few rejected rows, kept with its clean's
count), plus EtlRun for the runs themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from etl.core.clock import utcnow  # noqa: F401 - re-exported: the stores take it from here
from etl.core.statuses import RunStatus, ShardStatus
from etl.core.urls import mask_secrets, mask_url

#: Stages whose completion is counted per batch in TaskCheckpoint, and their counter.
BATCH_COUNTERS = {"clean": "batches_cleaned", "load": "batches_loaded"}

#: Row counters a stage completion may add to, per stage.
ROW_COUNTERS = {
    "clean": ("rows_cleaned", "rows_quarantined"),
    "load": ("rows_loaded",),
}

RUN_STATUSES = tuple(RunStatus)
SHARD_STATUSES = tuple(ShardStatus)


@dataclass
class RunRecord:
    """One run of a pipeline over a shard plan (EtlRun)."""

    run_id: str
    pipeline: str
    plan: str  # shard plan fingerprint, e.g. "hash(flight_id)/20"
    shards: int
    status: str = RunStatus.RUNNING
    params: dict[str, Any] = field(default_factory=dict)  # JSON-able: batch size, window...
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass
class Checkpoint:
    """Progress of one shard of one run (TaskCheckpoint), unique on (run_id, shard).

    `cursor` is the shard's position after the last fetched batch (JSON-able: int, float,
    str or None before the first batch). `fetch_done` is set once the shard has no rows left.
    """

    run_id: str
    shard: int
    cursor: Any = None
    status: str = ShardStatus.PENDING
    fetch_done: bool = False
    batches_fetched: int = 0
    batches_cleaned: int = 0
    batches_loaded: int = 0
    rows_fetched: int = 0
    rows_cleaned: int = 0
    rows_quarantined: int = 0
    rows_loaded: int = 0
    updated_at: datetime = field(default_factory=utcnow)
    last_error: str | None = None

    @property
    def complete(self) -> bool:
        """Every batch fetched, and every fetched batch loaded."""
        return self.fetch_done and self.batches_loaded >= self.batches_fetched


@dataclass
class RawPayload:
    """Pointer to one fetched batch in the object store, unique on (run_id, shard, batch)."""

    run_id: str
    shard: int
    batch: int
    key: str  # object key inside the object store
    bytes: int
    sha256: str
    rows: int
    cursor_start: Any
    cursor_end: Any
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class ErrorRecord:
    """One failure (TaskErrorLog): what failed, where, and its traceback."""

    run_id: str
    stage: str
    error_type: str
    message: str
    shard: int | None = None
    batch: int | None = None
    traceback: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)


def masked_error(error: ErrorRecord) -> ErrorRecord:
    """`error` with URL passwords and secret query values masked in its message,
    traceback and context: what a store keeps and a command shows (etl.core.urls)."""
    return dataclasses.replace(error, message=mask_url(error.message),
                               traceback=mask_url(error.traceback),
                               context=mask_secrets(error.context))


@dataclass
class Lease:
    """Ownership of one task (PendingTasks), unique on task_key."""

    task_key: str
    taken_by: str | None
    lease_until: datetime | None
    heartbeat: datetime | None = None
    retry_count: int = 0
    payload_ref: str | None = None
    token: int = 0  # fencing token: grows by one each time the lease changes hands


@dataclass
class Fence:
    """Proof of a held lease, checked by the writes that commit a task's effect: a worker
    whose lease expired and was taken over (its token is stale) cannot commit (fencing).
    A commit asked to `release` the lease ends it in the same transaction and sets
    `released`, so its holder has nothing left to release or renew."""

    task_key: str
    owner: str
    token: int
    released: bool = field(default=False, compare=False)


@runtime_checkable
class StateStore(Protocol):
    """What the actors, the CLI and the notebooks need from the state store."""

    url: str  # the store's URL with any password masked

    def close(self) -> None: ...

    # -- runs (EtlRun) ----------------------------------------------------------------
    def create_run(self, run: RunRecord) -> bool:
        """Insert the run; False (and no change) if run_id exists already."""

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def latest_run(self, pipeline: str, plan: str, *, unfinished: bool = True) -> RunRecord | None:
        """The newest run (by created_at) of this pipeline and plan, only unfinished ones
        (status "running" or "failed") when `unfinished`."""

    def list_runs(self, *, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Runs newest first."""

    def set_run_status(self, run_id: str, status: str) -> None: ...

    # -- checkpoints (TaskCheckpoint) -------------------------------------------------
    def init_checkpoints(self, run_id: str, shards: int) -> None:
        """Create checkpoints 0..shards-1 that do not exist yet; existing ones are untouched."""

    def get_checkpoint(self, run_id: str, shard: int) -> Checkpoint | None: ...

    def list_checkpoints(self, run_id: str | None = None) -> list[Checkpoint]:
        """Ordered by (run_id, shard)."""

    def record_fetch(self, payload: RawPayload, *, exhausted: bool,
                     fence: Fence | None = None, release: bool = False,
                     ledger: bool = False) -> bool:
        """Record a fetched batch: insert the RawPayload if absent, then advance the
        checkpoint from batch `payload.batch` to `payload.batch + 1` (cursor = cursor_end,
        rows_fetched += rows, fetch_done = exhausted, status "running" unless done) only if
        its batches_fetched still equals payload.batch. True if this call advanced it.
        `ledger`: also write the TaskDedup entry task_fingerprint("fetch", run, shard,
        batch), whether or not this call advanced the checkpoint.
        With a `fence`, raises LeaseLost and writes nothing unless the fence's lease is
        still held (same owner and token, not expired); with `release` too, the write ends
        that lease (as release_lease would) and sets `fence.released`: one transaction
        where the store has them (SQLite), the lease's own write right after the commit's
        otherwise (MongoDB). The same holds for finish_fetch and complete_stage."""

    def finish_fetch(self, run_id: str, shard: int, batches: int, *,
                     fence: Fence | None = None, release: bool = False) -> bool:
        """Mark the shard fully fetched after `batches` batches (no rows left), only if
        batches_fetched == batches. True if this call changed it."""

    def complete_stage(self, run_id: str, shard: int, batch: int, stage: str,
                       rows: dict[str, int], *, fence: Fence | None = None,
                       release: bool = False, quarantine: bytes | None = None) -> bool:
        """Count a batch's `stage` ("clean" or "load") as done, exactly once: adds 1 to
        batches_<stage> and each of `rows` (names from ROW_COUNTERS[stage]) to the
        checkpoint, then writes the TaskDedup entry task_fingerprint(stage, run, shard,
        batch). A second call with the same (run, shard, batch, stage) changes nothing and
        returns False. Safe if the process dies between any two writes. After a "load" that
        makes the checkpoint complete, its status becomes "done".
        `quarantine` (a clean's): the batch's quarantined rows as bytes
        (etl.runtime.quarantine), kept in QuarantinedRows in the same transaction (SQLite) or
        written just before the count (MongoDB), so a counted clean always finds them; a
        second call replaces them with its own (the same rows: stages are pure)."""

    def set_shard_status(self, run_id: str, shard: int, status: str,
                         last_error: str | None = None) -> None:
        """Set the shard's status, and its last_error (kept masked: mask_url) if given."""

    # -- dedup ledger (TaskDedup) -----------------------------------------------------
    def is_done(self, fingerprint: str) -> bool: ...

    def mark_done(self, fingerprint: str, stage: str, run_id: str | None = None) -> bool:
        """Insert the fingerprint; False if it was already there."""

    def count_done(self, run_id: str | None = None) -> int: ...

    # -- raw payload pointers (RawPayload) -------------------------------------------
    def get_payload(self, run_id: str, shard: int, batch: int) -> RawPayload | None: ...

    def list_payloads(self, run_id: str, shard: int | None = None) -> list[RawPayload]:
        """Ordered by (shard, batch)."""

    # -- quarantined rows kept with their clean (QuarantinedRows) ---------------------
    def get_quarantine(self, run_id: str, shard: int, batch: int) -> bytes | None:
        """The quarantined rows a batch's clean kept here (complete_stage), None when it
        kept none here (none rejected, not cleaned yet, or written as an object)."""

    # -- errors (TaskErrorLog) ---------------------------------------------------------
    def log_error(self, error: ErrorRecord) -> None:
        """Append `error` to TaskErrorLog, masked (masked_error): no password is stored."""

    def list_errors(self, run_id: str | None = None, *, limit: int = 100) -> list[ErrorRecord]:
        """Newest first."""

    # -- leases (PendingTasks) ---------------------------------------------------------
    def acquire_lease(self, task_key: str, owner: str, ttl: float,
                      payload_ref: str | None = None, *,
                      take_from: str | None = None) -> Lease | None:
        """Take the lease if it is free, expired, or already ours; returns the lease (with a
        token that grows each time ownership changes) or None if another owner holds it.
        `take_from`: also take it, live, while `take_from` holds it (an owner proven dead,
        etl.runtime.leases): a takeover like an expiry, compared and set on the holder."""

    def renew_lease(self, task_key: str, owner: str, token: int, ttl: float) -> bool:
        """Extend our lease (heartbeat); False if we lost it (other owner or token)."""

    def release_lease(self, task_key: str, owner: str, token: int) -> bool: ...

    def get_lease(self, task_key: str) -> Lease | None: ...
