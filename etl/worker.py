"""`etl worker`: Dramatiq workers for every pipeline, on the configured RabbitMQ or Redis.

A worker needs no pipeline argument: a message names its run, and the run names its
pipeline (etl.context), so one worker serves every pipeline whose code it can import.

One process runs a Dramatiq Worker with `threads` threads. With several processes, this
process supervises: it forks them (each opens its own broker connection after the fork),
restarts one that dies (after a pause, so a crash loop does not spin), and on SIGTERM or
SIGINT stops them all gracefully: a worker finishes the messages it is working on, and
the broker redelivers the ones it had prefetched.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait

import dramatiq

from etl.actors import declare_actors
from etl.brokers import broker_kind, open_broker
from etl.config import Settings
from etl.context import ContextCache
from etl.errors import ConfigError
from etl.leases import LeaseKeeper, lease_ttl
from etl.pipeline import load_pipeline
from etl.metrics import Metrics, StateCollector
from etl.queues import queues_of
from etl.state import StateStore, open_state
from etl.urls import mask_url

log = logging.getLogger(__name__)

#: Pause before restarting a worker process that died.
RESTART_DELAY = 1.0
#: Longest pause of a Redis worker's consumer between polls of a busy queue (ms).
REDIS_POLL_MS = 100


def _results(settings: Settings):  # type: ignore[no-untyped-def]
    from results import open_results

    try:
        return open_results(settings.results_url)
    except Exception as exc:  # noqa: BLE001 - work goes on without recording results
        log.warning("result store %s unavailable (%s); not recording results",
                    mask_url(settings.results_url), exc)
        return None


def _preload(specs: list[str]) -> None:
    """Import these pipelines and parse their sources now, while the worker waits for work:
    the first batch of a run then does not wait for the parse (etl.sources.ParsedCache)."""
    for spec in specs:
        started = time.perf_counter()
        try:
            source = load_pipeline(spec).source
            if hasattr(source, "table"):
                source.table()
            log.info("preloaded %s in %.2f s", spec, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a worker serves other pipelines too
            log.warning("could not preload pipeline %s: %s", spec, exc)


def require_broker(settings: Settings) -> str:
    """The kind of the configured broker; a clear error for the in-process stub://."""
    kind = broker_kind(settings.broker_url)
    if kind == "stub":
        raise ConfigError("etl worker needs a broker: set ETL_BROKER_URL to amqp://... or "
                          "redis://... (with the embedded stub://, `etl run` does the work)")
    return kind


def run_worker(settings: Settings, *, threads: int, stop: threading.Event,
               metrics_port: int | None = None, preload: list[str] | None = None) -> None:
    """Run one Dramatiq worker in this process until `stop` is set; with `metrics_port`,
    serve Prometheus metrics on it; `preload` pipelines have their sources parsed at start."""
    kind = require_broker(settings)
    broker = open_broker(settings.broker_url)
    contexts = ContextCache(settings)
    state = open_state(settings.state_url)
    leases = LeaseKeeper(state, ttl=lease_ttl())
    metrics = _serve_metrics(settings, broker, state, contexts, metrics_port) if metrics_port else None
    declare_actors(broker, contexts, queue=settings.queue, results=_results(settings),
                   leases=leases, metrics=metrics)
    broker.emit_after("process_boot")
    if preload:
        threading.Thread(target=_preload, args=(preload,), name="etl-preload", daemon=True).start()
    # Redis: Dramatiq's consumer sleeps up to worker_timeout between polls while its prefetch
    # is full, so a short timeout keeps threads from idling between short batches.
    worker = dramatiq.Worker(broker, queues={settings.queue}, worker_threads=threads,
                             worker_timeout=REDIS_POLL_MS if kind == "redis" else 1000)
    if kind == "rabbitmq":
        worker.queue_prefetch = threads  # no delivery waits unacked behind a long batch
    worker.start()
    log.info("worker %d: %d threads on queue %s of %s", os.getpid(), threads, settings.queue,
             mask_url(settings.broker_url))
    try:
        stop.wait()
    finally:
        log.info("worker %d stopping", os.getpid())
        worker.stop()
        leases.close()
        broker.close()
        state.close()


def _serve_metrics(settings: Settings, broker: dramatiq.Broker, state: StateStore,
                   contexts: ContextCache, port: int) -> Metrics:
    from prometheus_client import REGISTRY, start_http_server

    metrics = Metrics(contexts)
    REGISTRY.register(StateCollector(state, queues=queues_of(broker), queue=settings.queue))
    start_http_server(port)
    log.info("worker %d: metrics on http://0.0.0.0:%d/metrics", os.getpid(), port)
    return metrics


def _child(settings: Settings, threads: int, metrics_port: int | None,
           preload: list[str] | None) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        run_worker(settings, threads=threads, stop=stop, metrics_port=metrics_port,
                   preload=preload)
    finally:
        logging.shutdown()


def serve(settings: Settings, *, processes: int, threads: int,
          metrics_port: int | None = None, preload: list[str] | None = None) -> None:
    """Run `processes` worker processes until SIGTERM/SIGINT; restart any that dies. With
    `metrics_port`, worker process i serves Prometheus metrics on metrics_port + i."""
    require_broker(settings)  # before any process is forked
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if processes == 1:
            run_worker(settings, threads=threads, stop=stop, metrics_port=metrics_port,
                       preload=preload)
            return
        if preload:
            _preload(preload)  # here, before the fork: every process shares the parsed tables
        _supervise(settings, processes=processes, threads=threads, stop=stop,
                   metrics_port=metrics_port, preload=None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(settings: Settings, *, processes: int, threads: int, stop: threading.Event,
               metrics_port: int | None, preload: list[str] | None) -> None:
    fork = multiprocessing.get_context("fork")

    def start(index: int) -> multiprocessing.Process:
        port = metrics_port + index if metrics_port else None
        child = fork.Process(target=_child, args=(settings, threads, port, preload),
                             name=f"etl-worker-{index}")
        child.start()
        return child

    children = {index: start(index) for index in range(processes)}
    try:
        while not stop.is_set():
            ended = wait([c.sentinel for c in children.values()], timeout=0.5)
            for index, child in list(children.items()):
                if child.sentinel in ended and not stop.is_set():
                    child.join()
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
