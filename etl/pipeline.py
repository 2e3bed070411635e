"""The pipeline definition: source, cleaning stages, sink, key, shard plan, batch size.

A pipeline is plain Python. Users build one in their own module and run it with
`etl run -p package.module:pipeline`; the attribute may be a Pipeline or a function that
returns one (handy when building it needs settings at run time).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from etl.core.config import check_queue_name
from etl.drift import POLICIES, normalise_kind
from etl.core.errors import USER_ERRORS, ConfigError, MissingExtra
from etl.core.extras import check_extras, missing_extra
from etl.sinks.base import BackfillAware, Sequenced
from etl.sources.base import Recuttable, Windowed
from etl.sources.windows import Window
from shards import HashShards, RangeShards, ShardPlan
from stages import Stage


@dataclass(frozen=True)
class RetryPolicy:
    """How failures are retried (Dramatiq's Retries: backoff min_backoff * 2**retries with
    jitter, capped at max_backoff). An error that is an instance of `permanent` is never
    retried and goes straight to the dead-letter queue; by default that is every error the
    toolkit raises on purpose (USER_ERRORS: bad config, unreadable batch, failed stage), while
    anything else (a network error, a timeout) is taken as transient."""

    max_retries: int = 5
    min_backoff_ms: int = 200
    max_backoff_ms: int = 30_000
    permanent: tuple[type[BaseException], ...] = USER_ERRORS

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.min_backoff_ms < 0 or self.max_backoff_ms < self.min_backoff_ms:
            raise ConfigError(f"invalid retry policy {self}: need max_retries >= 0 and "
                              "0 <= min_backoff_ms <= max_backoff_ms")


#: The rows per batch of a pipeline that sets none: a shard's rows in one batch (a batch
#: has a fixed cost, so fewer and larger ones are cheaper), counting half as many again as
#: the mean shard's (shards differ in size), within these bounds (memory, and progress
#: that moves); DEFAULT_BATCH_ROWS when the source cannot tell its size.
AUTO_BATCH_ROWS = (10_000, 250_000)
DEFAULT_BATCH_ROWS = 50_000


def auto_batch_size(rows: int | None, shards: int) -> int:
    """The batch size a new run of a pipeline without one gets, for `rows` source rows."""
    if rows is None:
        return DEFAULT_BATCH_ROWS
    low, high = AUTO_BATCH_ROWS
    return max(low, min(high, -(-rows * 3 // (2 * max(1, shards)))))


#: Pipeline.raw_landing's choices.
RAW_LANDINGS = ("auto", "copy")


@dataclass(frozen=True)
class Pipeline:
    """What to move, how to clean it, where to put it, and how to split the work."""

    name: str
    source: Any  # etl.sources.base.Source
    sink: Any  # etl.sinks.base.Sink
    key: Sequence[str]
    shards: ShardPlan
    stages: Sequence[Stage] = field(default_factory=tuple)
    #: Rows per batch; None: chosen when a run is created (`auto_batch_size`).
    batch_size: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    window_column: str | None = None  # the column `etl backfill --start/--end` windows on
    expected_schema: dict[str, str] | None = None  # source column -> kind (etl.drift)
    schema_drift: str = "evolve"  # what a drifted batch gets: evolve, freeze or discard
    #: The broker queue of this pipeline's messages, so workers can be dedicated to it
    #: (`etl worker --queue`); None: the `queue` setting. Embedded mode ignores it.
    queue: str | None = None
    #: How a fetched batch lands: "auto" keeps a pointer (the source's fingerprint and the
    #: batch's cursor range, cut again when needed) for a source that gives the same rows
    #: again (etl.sources.base.Recuttable: a file, by its content hash) and a copy in the
    #: object store for any other; "copy" always copies, so raw batches outlive the source.
    raw_landing: str = "auto"

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"pipeline name {self.name!r} must be letters, digits, - or _")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"pipeline {self.name}: batch_size must be >= 1, got {self.batch_size}")
        if not self.key or isinstance(self.key, str):
            raise ConfigError(f"pipeline {self.name}: key must be a list naming at least one "
                              f"column, not {self.key!r}")
        if isinstance(self.sink, Sequenced):  # the sink holds one row per pipeline key
            if self.sink.key and tuple(self.sink.key) != tuple(self.key):
                raise ConfigError(f"pipeline {self.name}: the sink's key {list(self.sink.key)} "
                                  f"differs from the pipeline's key {list(self.key)}; give it once")
            if not self.sink.key:
                object.__setattr__(self, "sink", self.sink.with_key(self.key))
        if self.schema_drift not in POLICIES:
            raise ConfigError(f"pipeline {self.name}: schema_drift must be one of "
                              f"{', '.join(POLICIES)}, not {self.schema_drift!r}")
        if self.raw_landing not in RAW_LANDINGS:
            raise ConfigError(f"pipeline {self.name}: raw_landing must be one of "
                              f"{', '.join(RAW_LANDINGS)}, not {self.raw_landing!r}")
        if self.queue is not None:
            check_queue_name(self.queue, where=f"pipeline {self.name}")
        for kind in (self.expected_schema or {}).values():
            normalise_kind(kind)  # an unknown type name fails here, not in the first batch

    def with_shards(self, count: int | None) -> "Pipeline":
        """The same pipeline with its shard plan split into `count` shards (None: unchanged)."""
        if count is None or count == self.shards.shards:
            return self
        if count < 1:
            raise ConfigError(f"--shards must be >= 1, got {count}")
        plan = self.shards
        if isinstance(plan, RangeShards):
            new_plan: ShardPlan = RangeShards(plan.column, count)
        elif isinstance(plan, HashShards):
            new_plan = HashShards(plan.columns, count)
        else:
            new_plan = dataclasses.replace(plan, shards=count)  # type: ignore[type-var]
        return dataclasses.replace(self, shards=new_plan)

    def for_window(self, start: str, end: str, *, column: str | None = None) -> "Pipeline":
        """The pipeline over the rows with start <= window_column < end (a backfill);
        `column` overrides window_column (a run keeps the column it was created with)."""
        column = column or self.window_column
        if not column:
            raise ConfigError(f"pipeline {self.name} has no window_column: set "
                              "Pipeline(window_column=...) to backfill it by window")
        if not isinstance(self.source, Windowed):
            raise ConfigError(f"source {self.source.describe()} cannot be read by window")
        window = Window(column, str(start), str(end))
        window.validate()
        return dataclasses.replace(self.appending(), source=self.source.windowed(window))

    def appending(self) -> "Pipeline":
        """The pipeline with a sink that adds to what other runs loaded instead of replacing
        it (a backfill window, a quarantine replay)."""
        if not isinstance(self.sink, BackfillAware):
            return self
        return dataclasses.replace(self, sink=self.sink.for_backfill())

    def queue_or(self, default: str) -> str:
        """The queue this pipeline's messages go to on a broker whose default is `default`."""
        return self.queue or default

    def definition(self) -> dict[str, Any]:
        """What decides the rows a run loads besides the source data: stages, sink, key and
        schema, as text. A run keeps it, so a completed run whose pipeline was edited since
        is not taken for "nothing to load" (etl.runtime.runs.open_run)."""
        return {"stages": [_stable_repr(stage) for stage in self.stages],
                "sink": _stable_repr(self.sink), "key": list(self.key),
                "schema": dict(self.expected_schema or {}), "schema_drift": self.schema_drift}

    def key_notice(self) -> str | None:
        """One line when the sink cannot hold the key to one row (None when it does)."""
        if isinstance(self.sink, Sequenced) and self.sink.write_disposition == "merge":
            return None
        return (f"key {', '.join(self.key)} is not enforced by {self.sink.describe()}: a key "
                "loaded by several batches or runs is held once per load (a sink with "
                'write_disposition="merge" holds one row per key)')

    def raw_pointers(self) -> bool:
        """Whether fetched batches land as pointers into the source rather than copies."""
        return self.raw_landing == "auto" and isinstance(self.source, Recuttable)

    def describe(self) -> str:
        """Several lines naming every part, for `etl describe` and logs."""
        lines = [
            f"pipeline {self.name}",
            f"  source:  {self.source.describe()}",
            f"  shards:  {self.shards.describe()}",
            f"  batch:   {self.batch_size} rows" if self.batch_size else
            f"  batch:   auto (a shard's rows, {AUTO_BATCH_ROWS[0]:,} to {AUTO_BATCH_ROWS[1]:,})",
            "  raw:     " + ("pointers into the source (cut again when needed)"
                             if self.raw_pointers() else "copies in the object store"),
            f"  key:     {', '.join(self.key)}" + ("" if self.key_notice() is None
                                                       else " (not enforced by the sink)"),
            *([f"  queue:   {self.queue}"] if self.queue else []),
            *([f"  schema:  {len(self.expected_schema)} columns expected, drift policy "
               f"{self.schema_drift}"] if self.expected_schema else []),
            "  stages:",
            *[f"    {i + 1}. {stage!r}" for i, stage in enumerate(self.stages)],
            f"  sink:    {self.sink.describe()}",
        ]
        return "\n".join(lines)


DEMO_SPEC = "etl.demo:pipeline"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable_repr(part: object) -> str:
    """`repr(part)` without the memory address a default repr carries (which differs in
    every process and would make every run look like an edited pipeline)."""
    return _ADDRESS.sub("", repr(part))


def _user_code_error(exc: BaseException) -> str:
    """One line for an error in the user's own code: its type, message and where it was
    raised (file:line of the innermost frame, or of the syntax error)."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}{_where(exc)}"


def _where(exc: BaseException) -> str:
    """" (file, line N)" of the innermost frame of the user's own code in `exc`'s traceback
    (not the toolkit's, not an installed package's), or ""."""
    toolkit = str(Path(__file__).resolve().parents[1])
    own = [frame for frame in traceback.extract_tb(exc.__traceback__)
           if not frame.filename.startswith(("<", toolkit)) and "site-packages" not in frame.filename]
    return f" ({own[-1].filename}, line {own[-1].lineno})" if own else ""


def _spec_error(spec: str, exc: BaseException) -> ConfigError:
    """A toolkit error raised while the pipeline module was imported or its factory ran (a
    stage given a wrong argument, a bad pipeline option), as one line naming the spec and
    the user's line that raised it; a missing optional package keeps its install hint."""
    extra = missing_extra(exc)
    if extra is not None:
        return MissingExtra(f"{spec}: {extra}")
    return ConfigError(f"{spec}{_where(exc)}: {exc}")


def load_pipeline(spec: str) -> Pipeline:
    """Import `package.module:attribute` (or `demo`) and return the Pipeline it names."""
    if spec in ("", "demo"):
        spec = DEMO_SPEC
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"pipeline {spec!r} must look like package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except USER_ERRORS as exc:  # a bad stage or pipeline option: its message says what to change
        raise _spec_error(spec, exc) from exc
    except Exception as exc:  # noqa: BLE001 - a SyntaxError, or any error the module raises
        if missing_extra(exc) is not None:
            raise _spec_error(spec, exc) from exc
        raise ConfigError(f"{spec}: cannot import pipeline module {module_name!r}: "
                          f"{_user_code_error(exc)}") from exc
    try:
        target: Pipeline | Callable[[], Pipeline] = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    try:
        pipeline = target() if callable(target) and not isinstance(target, Pipeline) else target
    except USER_ERRORS as exc:
        raise _spec_error(spec, exc) from exc
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        if missing_extra(exc) is not None:
            raise _spec_error(spec, exc) from exc
        raise ConfigError(f"{spec}() failed: {_user_code_error(exc)}") from exc
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(f"{spec} is a {type(pipeline).__name__}, not an etl Pipeline")
    try:  # a sink's package missed now is one line, not a failure of every batch
        check_extras(pipeline)
    except MissingExtra as exc:
        raise MissingExtra(f"{spec}: {exc}") from None
    return pipeline
