"""Everything a batch step needs for one run: pipeline, fitted shard plan, stores.

Workers rebuild a run's context from the state store alone (the run records which pipeline
spec and which fitted plan it uses), so any process on any machine can work on any run.
Contexts are cached per process: opening stores and importing pipelines happens once.
A worker's cache also compares, once per run, the worker's own shared settings with those
the run's sender recorded (etl.core.shared_settings), and warns of each that differs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etl.core.config import Settings, load_settings
from etl.core.errors import ConfigError
from etl.core.shared_settings import mismatches
from etl.stores import Stores
from etl.stores.objects import ObjectStore
from etl.pipeline import DEFAULT_BATCH_ROWS, Pipeline, load_pipeline
from etl.sources.base import Windowed
from etl.stores.state import RunRecord, StateStore
from shards import ShardPlan, plan_from_dict

if TYPE_CHECKING:
    from etl.runtime.loaded_keys import LoadedKeys
    from etl.runtime.shard_frames import ShardFrames

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """A run and the objects its batch steps use."""

    run: RunRecord
    pipeline: Pipeline
    plan: ShardPlan
    state: StateStore
    objects: ObjectStore
    #: Whether a cleaned batch is written to the object store for its load. Workers on a
    #: broker do (the load may run on another machine); embedded mode does not: its load
    #: runs in the same process and takes the batch from memory, and a load anywhere else
    #: (after a crash) cleans the raw rows again, which stages, being pure, allow.
    staged_copies: bool = True
    #: Where this process keeps the key columns of the batches it cleans and loads, for the
    #: run's key audit (etl.runtime.loaded_keys; embedded mode, whose processes load whole
    #: shards). None: nothing is kept (a worker on a broker loads any shard's batches).
    loaded_keys: "LoadedKeys | None" = None
    #: Where this process keeps the shards it converted to pandas whole, each batch then a
    #: slice (etl.runtime.shard_frames; embedded mode, whose processes work whole shards).
    #: None: each batch is converted alone (a worker on a broker cleans any shard's batches).
    shard_frames: "ShardFrames | None" = None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @functools.cached_property
    def seq_stamp(self) -> int:
        """What orders this run's rows among all runs' (etl.runtime.keys.run_stamp)."""
        from etl.runtime.keys import run_stamp

        return run_stamp(self.run, self.state)

    @classmethod
    def build(cls, run: RunRecord, pipeline: Pipeline, state: StateStore,
              objects: ObjectStore) -> "RunContext":
        """The context of `run`, with the plan and batch size the run was created with (a
        resumed run must cut batches exactly as before, whatever the code says now)."""
        window = run.params.get("window")
        if window and (not isinstance(pipeline.source, Windowed)  # a backfill run
                       or pipeline.source.window is None):
            pipeline = pipeline.for_window(window["start"], window["end"], column=window["column"])
        batch_size = int(run.params.get("batch_size") or pipeline.batch_size or DEFAULT_BATCH_ROWS)
        if batch_size != pipeline.batch_size:
            pipeline = dataclasses.replace(pipeline, batch_size=batch_size)
        return cls(run, pipeline, plan_from_dict(run.params["plan"]), state, objects)


class ContextCache:
    """Per-process cache of RunContexts, built from settings when not registered.

    `check_shared_settings` (an `etl worker` process): the first time a run's context is
    built, each shared setting that differs from the one the run's sender recorded is
    logged, one WARNING per setting and run. Registered contexts (embedded mode, a sender's
    own run) are never checked: they use the settings that created the run."""

    def __init__(self, settings: Settings | None = None, *,
                 check_shared_settings: bool = False) -> None:
        self._settings = settings
        self._check_shared = check_shared_settings
        self._lock = threading.Lock()
        self._contexts: dict[str, RunContext] = {}
        self._state: StateStore | None = None
        self._objects: ObjectStore | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def register(self, context: RunContext) -> None:
        """Use this context for its run (the embedded runner already has one built)."""
        with self._lock:
            self._contexts[context.run_id] = context

    def _stores(self) -> tuple[StateStore, ObjectStore]:
        if self._state is None or self._objects is None:
            stores = Stores.from_settings(self.settings, results=False)
            self._state, self._objects = stores.state, stores.objects
        return self._state, self._objects

    def stores(self) -> tuple[StateStore, ObjectStore]:
        """The state and object stores of the settings (opened on first use)."""
        with self._lock:
            return self._stores()

    def get(self, run_id: str) -> RunContext:
        with self._lock:
            context = self._contexts.get(run_id)
            if context is not None:
                return context
            state, objects = self._stores()
            run = state.get_run(run_id)
            if run is None:
                raise ConfigError(f"run {run_id!r} not found in {state.url}")
            context = RunContext.build(run, load_pipeline(run.params["pipeline_spec"]),
                                       state, objects)
            self._contexts[run_id] = context
            log.info("worker context for run %s: %s", run_id, context.plan.describe())
            if self._check_shared:
                self._warn_of_mismatches(context)
            return context

    def _warn_of_mismatches(self, context: RunContext) -> None:
        """One WARNING per shared setting this worker does not share with the run's sender.
        A pipeline with a queue of its own travels on it whatever the `queue` setting says."""
        skip = frozenset({"queue"}) if context.pipeline.queue else frozenset()
        for found in mismatches(context.run.params, self.settings, skip=skip):
            log.warning("run %s was sent with %s=%s but this worker has %s: workers read "
                        "their own settings (`etl config` shows where each comes from)",
                        context.run_id, found.name, found.sent, found.here)
