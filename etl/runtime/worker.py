"""`etl worker`: Dramatiq workers for every pipeline, on the configured RabbitMQ or Redis.

A worker needs no pipeline argument: a message names its run, and the run names its
pipeline (etl.runtime.context), so one worker serves every pipeline whose code it can import.

One process runs a Dramatiq Worker with `threads` threads on the queues it is given
(default: the `queue` setting); a pipeline with its own `Pipeline.queue` is worked only by
workers started with `--queue` naming it, so heavy or urgent pipelines can get their own.
With several processes, this process supervises: it forks them (each opens its own broker
connection after the fork), restarts one that dies (after a pause, so a crash loop does not
spin), and on SIGTERM or SIGINT stops them all gracefully: a worker finishes the messages it
is working on, and the broker redelivers the ones it had prefetched. Its processes die with
it on every path (etl.core.processes.die_with_parent): a SIGKILLed supervisor leaves no
worker consuming behind it, and its restart does not double the consumers.

The broker is reached once before anything starts (its module's `probe`): a refused login
or a broker that does not answer ends `etl worker` with one line and exit status 3 instead
of consumer threads retrying it forever.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait

import dramatiq

from etl.runtime.actors import declare_actors
from etl.brokers import broker_module, is_embedded, open_broker, queues_of
from etl.brokers.base import Queues
from etl.core.arrow_pool import choose_pool
from etl.core.config import Settings
from etl.runtime.context import ContextCache
from etl.runtime.planning import declare_planner
from etl.runtime.runs import fit_plan
from etl.core.errors import ConfigError
from etl.runtime.leases import LeaseKeeper, lease_ttl
from etl.pipeline import load_pipeline
from etl.sources.base import ShardGrouped, WholeTable
from etl.runtime.metrics import Metrics, StateCollector
from etl.core.processes import die_with_parent
from etl.stores import open_results, open_state
from etl.stores.state import StateStore
from etl.core.urls import mask_url

log = logging.getLogger(__name__)

#: Pause before restarting a worker process that died.
RESTART_DELAY = 1.0


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How each worker process runs: its threads, the queues it consumes (empty: the `queue`
    setting), its metrics port (process i of N serves on port + i) and the pipelines whose
    sources it parses at start."""

    threads: int = 2
    queues: tuple[str, ...] = ()
    metrics_port: int | None = None
    preload: tuple[str, ...] = ()
    #: Exit once the queues are empty and nothing is in flight here (`etl worker --burst`).
    burst: bool = False

    def queues_of(self, settings: Settings) -> tuple[str, ...]:
        return self.queues or (settings.queue,)


def _preload(specs: tuple[str, ...]) -> None:
    """Import these pipelines and parse their sources now, while the worker waits for work:
    the first batch of a run then does not wait for the parse (etl.sources.files.ParsedCache).
    A source read shard by shard also has its rows grouped and gathered by the pipeline's own
    shard plan, fitted as a new run fits it: a run of that plan (the usual case: `--shards`
    not changed) finds its batches ready to slice. Otherwise every worker would hash the
    rows and gather all of them at its first fetch (10x demo: ~1.2 s of CPU each)."""
    for spec in specs:
        started = time.perf_counter()
        try:
            pipeline = load_pipeline(spec)
            source = pipeline.source
            if isinstance(source, WholeTable):
                source.table()
            if isinstance(source, ShardGrouped):
                plan = fit_plan(pipeline)
                source.prepare_shards(plan, range(plan.shards))
            log.info("preloaded %s in %.2f s", spec, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a worker serves other pipelines too
            log.warning("could not preload pipeline %s: %s", spec, exc)


def require_broker(settings: Settings) -> None:
    """A clear error for the in-process stub://: there is nothing for a worker to consume."""
    if is_embedded(settings.broker_url):
        raise ConfigError("etl worker needs a broker: set ETL_BROKER_URL to amqp://... or "
                          "redis://... (with the embedded stub://, `etl run` does the work)")


def run_worker(settings: Settings, options: WorkerOptions, *, stop: threading.Event) -> None:
    """Run one Dramatiq worker in this process until `stop` is set."""
    require_broker(settings)
    queues = options.queues_of(settings)
    broker = open_broker(settings.broker_url)
    try:
        broker_module(settings.broker_url).probe(broker)
    except BaseException:
        broker.close()
        raise
    contexts = ContextCache(settings, check_shared_settings=True)
    state = open_state(settings.state_url)
    leases = LeaseKeeper(state, ttl=lease_ttl(settings))
    metrics = (_serve_metrics(broker, state, contexts, options.metrics_port, queues)
               if options.metrics_port else None)
    declare_actors(broker, contexts, queue=settings.queue, leases=leases, metrics=metrics,
                   results=open_results(settings.results_url, required=False))
    declare_planner(broker, contexts, queue=settings.queue)
    for queue in queues:  # the actors live on the `queue` setting; pipelines may use others
        if queue not in broker.get_declared_queues():
            broker.declare_queue(queue)
    broker.emit_after("process_boot")
    if options.preload:
        threading.Thread(target=_preload, args=(options.preload,), name="etl-preload",
                         daemon=True).start()
    worker = broker_module(settings.broker_url).new_worker(broker, queues=set(queues),
                                                           threads=options.threads)
    worker.start()
    log.info("worker %d: %d threads on queue(s) %s of %s", os.getpid(), options.threads,
             ", ".join(queues), mask_url(settings.broker_url))
    try:
        if options.burst:
            _until_idle(worker, queues_of(broker), queues, stop=stop)
        stop.wait()
    finally:
        log.info("worker %d stopping", os.getpid())
        worker.stop()
        leases.close()
        broker.close()
        state.close()


#: A burst worker stops once it found nothing to do this many checks in a row...
IDLE_CHECKS = 3
#: ... this many seconds apart.
IDLE_EVERY = 0.5


def _busy(worker: dramatiq.Worker) -> bool:
    """Whether this process's Dramatiq worker holds a message: prefetched, delayed by its
    consumers, or being worked on."""
    if worker.work_queue.unfinished_tasks:
        return True
    return any(consumer.delay_queue.unfinished_tasks for consumer in worker.consumers.values())


def _until_idle(worker: dramatiq.Worker, view: Queues, queues: tuple[str, ...], *,
                stop: threading.Event) -> None:
    """Return (setting `stop`) once the broker shows no ready or delayed message on
    `queues` and this worker holds none, IDLE_CHECKS times in a row: a batch step sends the
    next one before it is acked, so a quiet moment between them is not the end."""
    quiet = 0
    try:
        while not stop.wait(IDLE_EVERY):
            waiting = sum(view.counts(q).outstanding for q in queues)
            quiet = quiet + 1 if not waiting and not _busy(worker) else 0
            if quiet >= IDLE_CHECKS:
                log.info("worker %d: queue(s) %s empty, nothing in flight: burst done",
                         os.getpid(), ", ".join(queues))
                stop.set()
    finally:
        view.close()


def _serve_metrics(broker: dramatiq.Broker, state: StateStore, contexts: ContextCache,
                   port: int, queues: tuple[str, ...]) -> Metrics:
    from prometheus_client import REGISTRY, start_http_server

    metrics = Metrics(contexts)
    REGISTRY.register(StateCollector(state, queues=queues_of(broker), names=queues))
    start_http_server(port)
    log.info("worker %d: metrics on http://0.0.0.0:%d/metrics", os.getpid(), port)
    return metrics


def probe_broker(settings: Settings) -> None:
    """Reach the broker once; its outage errors (a refused login included) raise here."""
    broker = open_broker(settings.broker_url)
    try:
        broker_module(settings.broker_url).probe(broker)
    finally:
        broker.close()


def _child(settings: Settings, options: WorkerOptions, parent: int) -> None:
    die_with_parent(parent)  # first: a SIGKILLed supervisor leaves no worker behind
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        run_worker(settings, options, stop=stop)
    finally:
        logging.shutdown()


def serve(settings: Settings, options: WorkerOptions, *, processes: int = 1) -> None:
    """Run `processes` worker processes until SIGTERM/SIGINT; restart any that dies."""
    require_broker(settings)  # before any process is forked
    choose_pool(long_lived=True)  # before a preload parses; forks inherit it (etl.core.arrow_pool)
    # Every step's stages need pandas, which a pipeline no longer imports when it is built
    # (etl.core.lazy): imported here, before any fork and any message, not by a run's first batch
    importlib.import_module("pandas")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if processes == 1:
            run_worker(settings, options, stop=stop)
            return
        probe_broker(settings)  # a refused login ends the supervisor, not a restart loop
        if options.preload:
            _preload(options.preload)  # before the fork: every process shares the parsed tables
        _supervise(settings, dataclasses.replace(options, preload=()), processes=processes,
                   stop=stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(settings: Settings, options: WorkerOptions, *, processes: int,
               stop: threading.Event) -> None:
    fork = multiprocessing.get_context("fork")

    def start(index: int) -> multiprocessing.Process:
        port = options.metrics_port + index if options.metrics_port else None
        child = fork.Process(target=_child, name=f"etl-worker-{index}",
                             args=(settings, dataclasses.replace(options, metrics_port=port),
                                   os.getpid()))
        child.start()
        return child

    children = {index: start(index) for index in range(processes)}
    try:
        while not stop.is_set() and children:
            ended = wait([c.sentinel for c in children.values()], timeout=0.5)
            for index, child in list(children.items()):
                if child.sentinel in ended and not stop.is_set():
                    child.join()
                    if options.burst and child.exitcode == 0:  # its burst is done
                        del children[index]
                        continue
                    log.error("%s (pid %d) exited with %s; restarting it", child.name, child.pid,
                              child.exitcode)
                    time.sleep(RESTART_DELAY)
                    children[index] = start(index)
    finally:
        for child in children.values():
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for child in children.values():
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
