"""The API's request and response bodies (pydantic), as the OpenAPI spec shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: What a run id may look like over HTTP (ids made by the toolkit always do).
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,159}$"


class Problem(BaseModel):
    """Every 4xx/5xx body: what went wrong, and the input field it is about when there is one."""

    error: str
    field: str | None = None
    detail: list[dict[str, Any]] | None = None


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(min_length=1, max_length=64, description="Included: ISO date/time or number")
    end: str = Field(min_length=1, max_length=64, description="Excluded")


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=300,
                          description="module:attribute, one of GET /api/v1/pipelines")
    shards: int | None = Field(None, ge=1, le=100_000)
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN,
                               description="Client-chosen run id: the same id twice is one run")
    fresh: bool = Field(False, description="A new run instead of resuming the newest unfinished one")
    resume: bool = Field(False, description="Take up a cancelled run (run_id) where it stopped")
    window: Window | None = Field(None, description="Backfill: start <= window column < end")


class Started(BaseModel):
    task_id: str
    status_url: str
    result_url: str
    joined: bool = Field(description="True when the run was already started (or done)")


class Progress(BaseModel):
    rows_done: int
    rows_total: int | None
    rows_loaded: int
    rows_quarantined: int
    shards_done: int
    shards_total: int
    share: float


class ShardState(BaseModel):
    shard: int
    status: str
    share_done: float | None
    rows_fetched: int
    rows_loaded: int
    rows_quarantined: int
    batches_fetched: int
    batches_loaded: int
    last_error: str | None


class ErrorEntry(BaseModel):
    at: str | None
    stage: str
    shard: int | None
    batch: int | None
    error_type: str
    message: str
    traceback: str
    context: dict[str, Any]


class Timings(BaseModel):
    created_at: str | None
    updated_at: str | None
    elapsed_seconds: float


class Worker(BaseModel):
    """The child process this server started for the run, when it did."""

    pid: int
    alive: bool
    exit_code: int | None
    started_at: float
    log: str


class RunSummary(BaseModel):
    run_id: str
    pipeline: str
    plan: str
    shards: int
    status: str
    source_rows: int | None
    pipeline_spec: str | None
    window: dict[str, Any] | None
    created_at: str | None
    updated_at: str | None


class Status(RunSummary):
    task_id: str
    progress: Progress
    shard_states: list[ShardState]
    last_error: ErrorEntry | None
    timings: Timings
    worker: Worker | None = None


class Result(BaseModel):
    task_id: str
    run_id: str
    pipeline: str
    status: str
    rows_in: int
    rows_loaded: int
    rows_quarantined: int
    rows_added: int
    batches_loaded: int
    batches_drifted: int
    shards: int
    shards_done: int
    seconds: float
    rows_per_second: float | None
    keys_repeated: int | None
    created_at: str | None
    ended_at: str | None


class RunsPage(BaseModel):
    runs: list[RunSummary]
    limit: int
    offset: int
    next_offset: int | None


class Shards(BaseModel):
    run_id: str
    shards: list[dict[str, Any]]


class Errors(BaseModel):
    run_id: str
    errors: list[ErrorEntry]


class QuarantineReason(BaseModel):
    stage: str | None
    reason: str | None
    rows: int


class Quarantine(BaseModel):
    run_id: str
    rows: int
    reasons: list[QuarantineReason]


class DeadLetters(BaseModel):
    run_id: str
    queue: str | None
    dead_letters: list[dict[str, Any]] | None = Field(
        description="null without a broker (embedded mode has no dead-letter queue)")


class QueueGauge(BaseModel):
    queue: str
    ready: int
    delayed: int
    in_flight: int | None
    dead_letters: int
    consumers: int


class Queues(BaseModel):
    mode: Literal["embedded", "distributed"]
    broker: str
    queues: list[QueueGauge] | None


class Pipelines(BaseModel):
    pipelines: list[str]
    mode: Literal["embedded", "distributed"]
    can_start: bool = Field(description="False when the server has no api_token (read-only)")


class Cancelled(BaseModel):
    task_id: str
    status: str
    was: str = Field(description="The run's status before")
    purged: int = Field(description="Pending messages removed from the broker")


__all__ = ["Cancelled", "DeadLetters", "ErrorEntry", "Errors", "Pipelines", "Problem", "Progress",
           "Quarantine", "QuarantineReason", "QueueGauge", "Queues", "RUN_ID_PATTERN", "Result",
           "RunSummary", "RunsPage", "ShardState", "Shards", "StartRequest", "Started", "Status",
           "Timings", "Window", "Worker"]
