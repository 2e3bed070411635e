"""The runner: run a pipeline from Python, the one place a run's lifecycle lives.

`etl.run(pipeline)` probes an embedded run's sink (`probe_sink`), opens the run (or resumes
the unfinished one, or finds it complete), notes a schema change, works it here (embedded
broker) or sends it to RabbitMQ/Redis (distributed), finalizes it once and returns the
summary numbers. `etl run`, `etl
backfill`, the benches, the tests and notebooks all call it; the CLI only adds options and
printing. Example, in a notebook:

    import etl
    outcome = etl.run("etl.demo:pipeline", shards=8)
    outcome.completed, outcome.rows_loaded, outcome.rows_per_second
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from etl.core import collector
from etl.core.errors import ConfigError
from etl.sinks.base import KeyAudit, Reachable

if TYPE_CHECKING:
    from etl.core.config import Settings
    from etl.pipeline import Pipeline
    from etl.runtime.cancel import Cancelled
    from etl.runtime.context import RunContext
    from etl.runtime.distributed import Sender
    from etl.runtime.replay import ReplayResult
    from etl.runtime.run_record import RunTracker
    from etl.runtime.runs import ProgressCallback, WorkOutcome
    from etl.stores import Stores
    from etl.stores.state import ErrorRecord, RunRecord

log = logging.getLogger(__name__)

#: How a run was found when it was opened.
Opened = Literal["new", "resumed", "complete"]


@dataclass(frozen=True)
class RunStart:
    """What the runner knows once the run is open, before any work: for a progress bar
    and the "new run / resuming" line."""

    run: "RunRecord"
    opened: Opened
    distributed: bool
    state_url: str
    #: The source's columns differ from those the run expects (None: no change known).
    schema_change: str | None = None
    #: One line each, worth saying before the work: the pipeline was edited since its
    #: last completed run (so this is a new run), the sink does not enforce the key.
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Enqueued:
    """What a distributed start sent: batch steps sent now, and those already in flight."""

    sent: int
    leased: int
    waiting: int
    broker_url: str
    queue: str


@dataclass
class RunOutcome:
    """How a call of `etl.run` ended, with the run's summary numbers."""

    run_id: str
    opened: Opened
    distributed: bool
    completed: bool
    #: Distributed without `wait`: the work is on the broker and nobody here follows it.
    enqueued: bool = False
    elapsed: float = 0.0
    before: dict[str, int] = field(default_factory=dict)  # totals when this call began
    after: dict[str, int] = field(default_factory=dict)  # totals when it ended
    drifted: int = 0  # batches reported with schema drift
    dead_letters: int = 0
    resent: int = 0  # lost steps the distributed follower sent again
    #: The latest failures (at most 5) of a run that did not complete.
    errors: list["ErrorRecord"] = field(default_factory=list)
    #: Keys the sink holds in more than one batch, for a sink that cannot hold a key to one
    #: row but can count (etl.sinks.base.KeyAudit); None for the others.
    keys_repeated: int | None = None
    #: The run was cancelled while this call worked or followed it (`etl.cancel`).
    cancelled: bool = False

    @property
    def rows_loaded(self) -> int:
        return self.after.get("rows_loaded", 0)

    @property
    def rows_quarantined(self) -> int:
        return self.after.get("rows_quarantined", 0)

    @property
    def loaded_now(self) -> int:
        """Rows this call loaded (a resume counts only what it added)."""
        return self.rows_loaded - self.before.get("rows_loaded", 0)

    @property
    def rows_added(self) -> int:
        """Rows a row-adding stage (Explode) made beyond those fetched, so that a finished
        run adds up: rows in + rows added = rows loaded + rows quarantined."""
        if not self.completed or not self.after:
            return 0
        return max(0, self.after["rows_cleaned"] + self.after["rows_quarantined"]
                   - self.after["rows_fetched"])

    @property
    def rows_per_second(self) -> float | None:
        return self.loaded_now / self.elapsed if self.elapsed > 0 else None


def default_processes() -> int:
    """Local worker processes in embedded mode unless told: the cores, at most 4 (more
    processes than that contend for the state store more than they add). A run over fewer
    rows than etl.runtime.embedded.SMALL_INPUT_ROWS works in this process instead."""
    return min(os.cpu_count() or 1, 4)


def run(pipeline: "Pipeline | str", *, spec: str | None = None, shards: int | None = None,
        run_id: str | None = None, fresh: bool = False,
        window: "tuple[str, str] | Mapping[str, str] | None" = None,
        batch_size: int | None = None, wait: bool = True,
        progress: "ProgressCallback | None" = None, processes: int | None = None,
        threads: int | None = None, accept_schema: bool = False, settings: "Settings | None" = None,
        stores: "Stores | None" = None, resume: bool = False,
        on_start: Callable[[RunStart], None] | None = None,
        on_enqueued: Callable[[Enqueued], None] | None = None) -> RunOutcome:
    """Run `pipeline` (a Pipeline, or a `module:attribute` spec) to its end.

    Resumes the newest unfinished run of the same pipeline and shard plan unless `fresh`
    or `run_id`; a run complete over the same source data loads nothing. `window`
    (start, end) loads only start <= window_column < end, as a backfill run whose id
    derives from the window. With the embedded broker (the default) the work runs here in
    `processes` local processes; with RabbitMQ or Redis it is sent to `etl worker`s and,
    when `wait`, followed to its end. `progress` gets the checkpoints about 5 times a
    second; `on_start` and `on_enqueued` say what was opened and sent. An embedded run
    probes its sink before any work (`probe_sink`: SinkUnreachable, exit status 3 in the
    CLI); a distributed one leaves that to the workers.

    A cancelled run (`cancel`) is taken up only with `resume` (else RunCancelled is raised);
    if it is cancelled while this call works, the work stops and `outcome.cancelled` is set.

    `spec` names the pipeline for workers (`module:attribute`); it is required for a
    distributed run of a Pipeline object. `settings` default to those of the current
    directory (environment, etl.toml, setup.cfg); `stores` to those the settings name.
    """
    from etl.core.config import load_settings
    from etl.core.shared_settings import SHARED_PARAM, recorded_settings
    from etl.pipeline import load_pipeline
    from etl.brokers import is_embedded
    from etl.stores import Stores

    conf = settings or load_settings()
    if isinstance(pipeline, str):
        spec = spec or pipeline
        pipeline = load_pipeline(pipeline)
    if fresh and run_id:
        raise ConfigError("fresh and run_id exclude each other")
    distributed = not is_embedded(conf.broker_url)
    if spec is None:
        if distributed:
            raise ConfigError(f"pipeline {pipeline.name}: a distributed run needs its "
                              "importable spec (module:attribute) so workers can load it")
        spec = f"(python):{pipeline.name}"
    pipeline = pipeline.with_shards(shards)
    if batch_size is not None:
        pipeline = dataclasses.replace(pipeline, batch_size=batch_size)
    params: dict[str, Any] | None = None
    if window is not None:
        pipeline, run_id, params = _windowed(pipeline, window, run_id=run_id)
    if distributed:  # a new run keeps what its workers must share with it (hashed, masked)
        params = {**(params or {}), SHARED_PARAM: recorded_settings(conf)}
    else:  # a distributed sender does not probe: see probe_sink
        probe_sink(pipeline.sink)
    stores = stores or Stores.from_settings(conf)
    planner = distributed and stores.shared  # a worker creating the run opens the same stores
    call = _Run(pipeline, spec=spec, settings=conf, stores=stores, distributed=distributed,
                worker_plans=planner)
    try:
        with collector.paused():  # until the work begins (etl.core.collector)
            return call.go(fresh=fresh, run_id=run_id, params=params, accept_schema=accept_schema,
                           wait=wait, progress=progress, processes=processes, threads=threads,
                           resume=resume, on_start=on_start, on_enqueued=on_enqueued)
    finally:
        call.close()


def probe_sink(sink: Any) -> None:
    """Before an embedded run does any work: a Reachable sink (etl.sinks.base) is probed,
    writing nothing, and a sink that cannot be reached or written ends the call with
    SinkUnreachable, one line naming the sink (passwords masked) and the cause, instead of
    every batch failing and being retried. A setup mistake the probe meets (a ConfigError, an
    optional package not installed) is raised as it is.

    A distributed run is not probed: the machine that sends the work may legitimately not
    reach the sink (a laptop sending to workers inside the database's network); the
    workers reach it, and retry a batch it refuses."""
    from etl.core.error_lines import describe_error
    from etl.core.errors import SinkUnreachable
    from etl.core.extras import missing_extra

    if not isinstance(sink, Reachable):
        return
    try:
        detail = sink.reach()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure to reach it is the answer
        extra = missing_extra(exc)
        if extra is not None:
            raise extra from exc
        raise SinkUnreachable(f"{sink.describe()}: {describe_error(exc)}") from exc
    log.info("sink %s: %s", sink.describe(), detail)


def _windowed(pipeline: "Pipeline", window: "tuple[str, str] | Mapping[str, str]", *,
              run_id: str | None) -> "tuple[Pipeline, str, dict[str, Any]]":
    """The backfill pipeline of a window, its run id (from pipeline, plan and window, so
    triggering it again resumes it) and the params its run keeps."""
    from etl.core.names import backfill_run_id

    if isinstance(window, Mapping):
        try:
            start, end = window["start"], window["end"]
        except KeyError as exc:
            raise ConfigError(f"window needs start and end, missing {exc.args[0]!r}") from None
    else:
        try:
            start, end = window
        except (TypeError, ValueError):
            raise ConfigError(f"window must be (start, end), got {window!r}") from None
    windowed = pipeline.for_window(str(start), str(end))
    bounds = windowed.source.window
    return (windowed, run_id or backfill_run_id(pipeline.name, pipeline.shards.describe(), bounds),
            {"window": bounds.to_dict()})


class _Run:
    """One call of the runner: open, announce, work, finalize, sum up."""

    def __init__(self, pipeline: "Pipeline", *, spec: str, settings: "Settings",
                 stores: "Stores", distributed: bool, worker_plans: bool = False) -> None:
        self.pipeline, self.spec, self.settings = pipeline, spec, settings
        self.stores, self.distributed = stores, distributed
        #: A new run may be created by a worker (etl.runtime.planning) when followed.
        self.worker_plans = worker_plans
        self._sending: "Sender | None" = None

    def _sender(self) -> "Sender":
        """The call's broker connection, for its plan request and its work alike (opening
        one costs ~40 ms), with the result store's recorder: a worker waits, before it acks
        a job that is no ETL step (the plan request), for the job's record to exist."""
        if self._sending is None:
            from etl.runtime.distributed import Sender

            self._sending = Sender(self.settings, results=self.stores.results)
        return self._sending

    def close(self) -> None:
        """Close the broker connection, if one was opened (its recorder is flushed first)."""
        if self._sending is not None:
            sending, self._sending = self._sending, None
            sending.close()

    def _open(self, *, fresh: bool, run_id: str | None, params: dict[str, Any] | None,
              accept_schema: bool, wait: bool) -> "tuple[RunRecord, bool]":
        """open_run; a new run of a followed distributed run is created by a worker, where
        its source is parsed anyway (etl.runtime.planning)."""
        from etl.core.arrow_pool import choose_pool
        from etl.runtime.runs import open_run, parse_needed
        from etl.sources.base import ParsesAhead

        if not (self.worker_plans and wait and self._planned_remotely(params)):
            # this process reads the source (and, embedded, its forks work it): Arrow's pool
            # before the parse (etl.core.arrow_pool); a sender whose run a worker plans
            # parses nothing and may never import pyarrow at all
            choose_pool(long_lived=False)
            if isinstance(self.pipeline.source, ParsesAhead) and parse_needed(
                    self.stores.state, self.pipeline, fresh=fresh, run_id=run_id):
                self.pipeline.source.parse_ahead()  # its fingerprint's hash overlaps the parse
                # and so does pandas' import (~0.25 s), which a pipeline no longer pulls in
                # when it is built (etl.core.lazy.LazyModule): the demo runs ~0.1 s sooner
                importlib.import_module("pandas")
            return open_run(self.stores.state, self.pipeline, spec=self.spec, fresh=fresh,
                            run_id=run_id, params=params, accept_schema=accept_schema)
        from etl.runtime.planning import plan_on_worker

        sender = self._sender()
        return plan_on_worker(sender.planner, self.stores.state, self.pipeline, spec=self.spec,
                              queue=sender.actors.queue_for(self.pipeline), fresh=fresh,
                              run_id=run_id, params=params, accept_schema=accept_schema)

    def _planned_remotely(self, params: dict[str, Any] | None) -> bool:
        """Whether a worker creates the run (etl.runtime.planning, which imports Dramatiq:
        an embedded run asks nothing of it before its parse begins)."""
        from etl.runtime.planning import plans_remotely

        return plans_remotely(self.pipeline, self.spec, window=bool(params and "window" in params))

    def go(self, *, fresh: bool, run_id: str | None, params: dict[str, Any] | None,
           accept_schema: bool, wait: bool, progress: "ProgressCallback | None",
           processes: int | None, threads: int | None, on_start: Callable[[RunStart], None] | None,
           on_enqueued: Callable[[Enqueued], None] | None, resume: bool = False) -> RunOutcome:
        from etl.core.statuses import RunStatus
        from etl.runtime.cancel import RunCancelled
        from etl.runtime.context import RunContext
        from etl.runtime.runs import finalize_if_complete, totals

        state = self.stores.state
        run, created = self._open(fresh=fresh, run_id=run_id, params=params,
                                  accept_schema=accept_schema, wait=wait)
        opened: Opened = ("new" if created else
                          "complete" if run.status == RunStatus.COMPLETED else "resumed")
        was_cancelled = run.status == RunStatus.CANCELLED
        if was_cancelled and not resume:
            raise RunCancelled(run.run_id, newest=run_id is None)
        if opened == "resumed" and run.status != RunStatus.RUNNING:  # a running run is left
            state.set_run_status(run.run_id, RunStatus.RUNNING)  # as is: a cancel may land now
        notices = _notices(run, self.pipeline, created=created)
        for notice in notices:
            log.info("run %s: %s", run.run_id, notice)
        if on_start:
            on_start(RunStart(run, opened, self.distributed, state.url,
                              _schema_change(run, self.pipeline) if created else None,
                              notices))
        checkpoints = state.list_checkpoints(run.run_id)
        outcome = RunOutcome(run.run_id, opened, self.distributed, completed=False,
                             before=totals(checkpoints))
        if opened == "complete" and self.distributed:  # a follower arriving after the end
            outcome.completed, outcome.after = True, outcome.before
            return outcome
        context = RunContext.build(run, self.pipeline, state, self.stores.objects)
        tracker = self._tracker(context, resumed=opened == "resumed")
        if tracker:
            progress = tracker.wrap(progress)
        if was_cancelled and self.distributed:
            self._settle_cancel()
        work = self._work(context, created=created, wait=wait, progress=progress,
                          processes=processes, threads=threads, on_enqueued=on_enqueued)
        if work is None:  # sent, not followed
            outcome.enqueued = True
            return outcome
        # Finalize once, here: the sink finishes the run and the run is marked completed
        # (the load that finished the last shard may have done it already; it is idempotent).
        completed = work.completed and finalize_if_complete(context)
        outcome.cancelled = work.cancelled and not completed
        if not completed and not self.distributed and not outcome.cancelled:
            state.set_run_status(run.run_id, RunStatus.FAILED)  # resumable: run it again
        if tracker:
            tracker.finish(completed, work.checkpoints, cancelled=outcome.cancelled)
        outcome.completed, outcome.elapsed = completed, work.elapsed
        outcome.dead_letters, outcome.resent = work.dead_letters, work.resent
        outcome.after = totals(work.checkpoints)
        if completed and isinstance(context.pipeline.sink, KeyAudit):
            audit = context.pipeline.sink.repeated_keys
            counted = ({"run_id": run.run_id, "counted": work.key_counts}
                       if _takes(audit, "counted") else {})  # a sink written before them
            outcome.keys_repeated = audit(list(self.pipeline.key),
                                          shard_columns=_hash_columns(context.plan), **counted)
        outcome.drifted = sum(1 for e in state.list_errors(run.run_id, limit=100_000)
                              if e.stage == "schema")
        if not work.completed:  # masked: records kept before masking existed may hold secrets
            from etl.stores.state.base import masked_error

            outcome.errors = [masked_error(e) for e in state.list_errors(run.run_id, limit=5)]
        return outcome

    @staticmethod
    def _settle_cancel() -> None:
        """Before a resumed cancelled run's work is sent: wait until no worker can still
        believe it cancelled (each reads the status at most CHECK_EVERY_S old), or one would
        ack the resumed steps without work."""
        import time

        from etl.runtime.cancel import CHECK_EVERY_S

        time.sleep(CHECK_EVERY_S * 1.2)

    def _tracker(self, context: "RunContext", *, resumed: bool) -> "RunTracker | None":
        """The run's own record in the result store (embedded mode: this process works the
        run from start to end; distributed runs are recorded message by message). A
        `resumed` run's completion also writes the records an earlier, killed `etl run` of
        it lost (etl.runtime.run_record.record_lost_steps)."""
        if self.distributed or self.stores.results is None:
            return None
        from etl.runtime.run_record import RunTracker

        from etl.stores import results_ttl

        return RunTracker(self.stores.results, context, ttl=results_ttl(self.settings),
                          resumed=resumed)

    def _work(self, context: "RunContext", *, created: bool, wait: bool,
              progress: "ProgressCallback | None", processes: int | None, threads: int | None,
              on_enqueued: Callable[[Enqueued], None] | None) -> "WorkOutcome | None":
        if not self.distributed:
            from etl.runtime.embedded import run_embedded

            return run_embedded(context, processes=processes, threads=threads,
                                on_progress=progress, results=self.stores.results)
        collector.resume()  # the sender follows the run from here
        sender = self._sender()
        sent = sender.start(context, created=created)
        if on_enqueued:
            on_enqueued(Enqueued(len(sent.sent), len(sent.leased), len(sent.waiting),
                                 self.settings.broker_url, sender.queue_of(context)))
        return sender.wait(context, on_progress=progress) if wait else None


def replay(run_id: str, *, pipeline: str | None = None, stages: "Sequence[str] | None" = None,
           settings: "Settings | None" = None, stores: "Stores | None" = None,
           on_batch: Callable[[int, int], None] | None = None,
           on_start: Callable[["RunRecord"], None] | None = None) -> "ReplayResult":
    """Clean run `run_id`'s quarantined rows again with the (fixed) pipeline and load what
    passes, exactly once, as a replay run of its own (see etl.runtime.replay).

    `pipeline` is a `module:attribute` spec (default: the one the run used); `stages` limits
    the replay to rows those stages rejected. The replay appends to what the run loaded.
    """
    from etl.core.config import load_settings
    from etl.pipeline import load_pipeline
    from etl.runtime.context import RunContext
    from etl.runtime.replay import open_replay, replay as replay_rows
    from etl.stores import Stores

    stores = stores or Stores.from_settings(settings or load_settings(), results=False)
    state = stores.state
    original = state.get_run(run_id)
    if original is None:
        raise ConfigError(f"run {run_id!r} not found in {state.url}")
    spec = pipeline or original.params["pipeline_spec"]
    fixed = load_pipeline(spec).appending()
    if fixed.name != original.pipeline:
        raise ConfigError(f"pipeline {spec} is {fixed.name!r}, the run is {original.pipeline!r}")
    run = open_replay(state, original, spec=spec, stages=stages or None)
    if on_start:
        on_start(run)
    context = RunContext.build(run, fixed, state, stores.objects)
    return replay_rows(context, original, on_batch=on_batch)


def cancel(run_id: str, *, purge: bool = False, settings: "Settings | None" = None,
           stores: "Stores | None" = None) -> "Cancelled":
    """Cancel run `run_id`: its status becomes `cancelled`; workers ack its remaining
    messages without work (each notices within about a second), an embedded `etl run`
    working it stops once the steps in hand end, and `run(..., resume=True)` takes it up
    again where it stopped. With `purge`, its pending messages are also removed from the
    broker's queue at once (RabbitMQ or Redis; nothing to do with the embedded broker). A
    completed run cannot be cancelled (ConfigError); cancelling a cancelled run changes
    nothing."""
    import dataclasses as dc

    from etl.brokers import is_embedded
    from etl.core.config import load_settings
    from etl.runtime.cancel import cancel_run, purge_run
    from etl.stores import Stores

    conf = settings or load_settings()
    opened = stores or Stores.from_settings(conf)
    try:
        done = cancel_run(opened.state, run_id, results=opened.results)
        if purge and not is_embedded(conf.broker_url):  # an embedded run's live in its process
            done = dc.replace(done, purged=purge_run(conf, opened.state, run_id,
                                                     results=opened.results))
        return done
    finally:
        if stores is None:
            _close(opened)


def purge(run_id: str, *, queue: str | None = None, settings: "Settings | None" = None,
          stores: "Stores | None" = None) -> int:
    """Remove run `run_id`'s pending messages from its queue (default: its pipeline's, else
    the `queue` setting) on the configured RabbitMQ or Redis broker, leaving other runs'
    messages; their result records end `cancelled`. How many were removed. The run's status
    is not changed: what was purged is missing work that a resume or `etl reconcile` sends
    again."""
    from etl.core.config import load_settings
    from etl.runtime.cancel import purge_run
    from etl.stores import Stores

    conf = settings or load_settings()
    opened = stores or Stores.from_settings(conf)
    try:
        return purge_run(conf, opened.state, run_id, queue=queue, results=opened.results)
    finally:
        if stores is None:
            _close(opened)


def _close(stores: "Stores") -> None:
    """Close the state and result stores a call opened for itself."""
    stores.state.close()
    if stores.results is not None:
        stores.results.close()


def _takes(method: Any, name: str) -> bool:
    """Whether `method` accepts the keyword `name` (or any keyword)."""
    import inspect

    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _hash_columns(plan: Any) -> tuple[str, ...]:
    """The columns a hash shard plan assigns rows by (none for other plans)."""
    from shards import HashShards

    return tuple(plan.columns) if isinstance(plan, HashShards) else ()


def _notices(run: "RunRecord", pipeline: "Pipeline", *, created: bool) -> tuple[str, ...]:
    """The lines worth saying as a run opens (RunStart.notices)."""
    found = []
    if created and run.params.get("definition_change"):
        found.append(f"pipeline {run.params['definition_change']}: a new run loads it again")
    key = pipeline.key_notice()
    if key:
        found.append(key)
    return tuple(found)


def _schema_change(run: "RunRecord", pipeline: "Pipeline") -> str | None:
    """The difference between the source's columns now and those of the run the new run
    learned its schema from, with the policy that applies; None when they agree."""
    from etl.drift import compare_kinds

    learned, now = run.params.get("expected_schema"), run.params.get("source_schema")
    if not learned or not now:
        return None
    drift = compare_kinds(now, learned)
    if not drift:
        return None
    return (f"since run {run.params.get('schema_from')}: {drift.describe()}; policy "
            f"{pipeline.schema_drift}")


__all__ = ["Enqueued", "RunOutcome", "RunStart", "cancel", "default_processes", "probe_sink", "purge",
           "replay", "run"]
