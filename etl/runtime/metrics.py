"""Prometheus metrics: what every worker counts, and what the state store and broker say.

Counted per message by the `Metrics` middleware (one registry per process):
  etl_rows_total{pipeline,stage,kind}      rows fetched / cleaned / quarantined / loaded
  etl_batches_total{pipeline,stage,outcome} done, skipped (dedup), deferred (lease busy),
                                           retried, failed (dead-lettered)
  etl_batch_seconds{pipeline,stage}        step latency histogram (p50/p95: `etl metrics`)
Read at scrape time by `StateCollector` (from the state store and the broker):
  etl_queue_messages{queue,state}          ready, delayed, dead (dead-letter depth)
  etl_queue_consumers{queue}
  etl_run_shards{run,pipeline,state}       done / total
  etl_run_rows_unfetched{run,pipeline}     cursor lag: source rows the cursors have not reached
  etl_run_rows_in_flight{run,pipeline}     fetched but neither loaded nor quarantined yet
Read at scrape time by `ResultStoreCollector` (this process's result writers):
  etl_results_writes_total, _rejected_total, _write_failures_total, _dropped_total,
  etl_results_write_batches_total, etl_results_write_seconds_total (latency: seconds/batches)

`etl worker --metrics-port P` serves them (process i of --processes N on P+i).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, Sequence

import dramatiq
from dramatiq.middleware import Middleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from etl.core.names import stage_of_actor
from etl.core.statuses import RunStatus, ShardStatus
from etl.runtime.context import ContextCache
from results.middleware import peek_report

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: Row counts an actor reports, and the `kind` label they are counted under, per stage.
_ROW_KINDS = {"fetch": {"rows": "fetched"}, "clean": {"rows": "cleaned", "quarantined": "quarantined"},
              "load": {"rows": "loaded"}}


class Metrics(Middleware):
    """Counts ETL messages: rows, outcomes and latency, labelled by pipeline and stage."""

    def __init__(self, contexts: ContextCache, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.contexts = contexts
        self.rows = Counter("etl_rows", "Rows through a stage", ["pipeline", "stage", "kind"],
                            registry=registry)
        self.batches = Counter("etl_batches", "Batch steps by outcome",
                               ["pipeline", "stage", "outcome"], registry=registry)
        self.latency = Histogram("etl_batch_seconds", "Time of one batch step",
                                 ["pipeline", "stage"], buckets=LATENCY_BUCKETS, registry=registry)
        try:
            registry.register(ResultStoreCollector())
        except ValueError:
            pass  # a second Metrics on this registry: its collector is there already
        self._started = threading.local()
        #: Per message, a run's pipeline name and the labelled series were looked up under
        #: locks (the context cache's, each metric's): ~8 us a message, kept here instead.
        self._pipelines: dict[str, str] = {}
        self._series: dict[tuple[Any, ...], Any] = {}

    def _pipeline(self, message: dramatiq.Message) -> str:
        run_id = message.args[0]
        name = self._pipelines.get(run_id)
        if name is None:
            try:
                name = self._pipelines[run_id] = self.contexts.get(run_id).pipeline.name
            except Exception:  # noqa: BLE001 - an unknown run still counts (and is asked again)
                return "unknown"
        return name

    def _labelled(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, made once per label set (the series lives for good)."""
        key = (id(metric), *labels)  # the metrics live as long as this middleware
        series = self._series.get(key)
        if series is None:
            series = self._series.setdefault(key, metric.labels(*labels))
        return series

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._started.at = time.perf_counter()

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        stage = stage_of_actor(message.actor_name)
        if stage is None:
            return
        pipeline = self._pipeline(message)
        started = getattr(self._started, "at", None)
        if started is not None:
            self._labelled(self.latency, pipeline, stage).observe(time.perf_counter() - started)
        if exception is not None:
            outcome = "failed" if getattr(message, "failed", False) else "retried"
            self._labelled(self.batches, pipeline, stage, outcome).inc()
            return
        reported, _ = peek_report()
        reported = reported if isinstance(reported, dict) else {}
        outcome = "deferred" if reported.get("deferred") else "skipped" if reported.get("skipped") else "done"
        self._labelled(self.batches, pipeline, stage, outcome).inc()
        for field, kind in _ROW_KINDS.get(stage, {}).items():
            if isinstance(reported.get(field), int) and reported[field]:
                self._labelled(self.rows, pipeline, stage, kind).inc(reported[field])


class ResultStoreCollector(Collector):
    """The result store's own counters in this process (results.writer.counters)."""

    _HELP = {"writes": ("etl_results_writes", "Result-store changes written"),
             "rejected": ("etl_results_rejected", "Result-store changes the lifecycle refused"),
             "failures": ("etl_results_write_failures", "Result-store changes lost to an outage"),
             "dropped": ("etl_results_dropped", "Result-store changes dropped (queue full)"),
             "batches": ("etl_results_write_batches", "Result-store batch writes"),
             "write_seconds": ("etl_results_write_seconds", "Seconds in result-store writes")}

    def collect(self) -> Iterator[CounterMetricFamily]:
        from results.writer import counters

        for name, value in counters().items():
            metric, text = self._HELP[name]
            yield CounterMetricFamily(metric, text, value=value)


class StateCollector(Collector):
    """Gauges read when scraped: queue depths, and progress of the unfinished runs."""

    def __init__(self, state: Any, *, queues: Any = None, names: Sequence[str] = ("etl",),
                 max_runs: int = 20) -> None:
        self.state, self.queues, self.names, self.max_runs = state, queues, tuple(names), max_runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily("etl_queue_messages", "Messages in the queue",
                                     labels=["queue", "state"])
        consumers = GaugeMetricFamily("etl_queue_consumers", "Consumers of the queue",
                                      labels=["queue"])
        for queue in self.names if self.queues is not None else ():
            try:
                counts = self.queues.counts(queue)
                for state in ("ready", "delayed", "dead"):
                    messages.add_metric([queue, state], getattr(counts, state))
                consumers.add_metric([queue], counts.consumers)
            except Exception as exc:  # noqa: BLE001 - a broker outage must not break a scrape
                log.warning("metrics: cannot read queue %s: %s", queue, exc)
        yield messages
        yield consumers
        shards = GaugeMetricFamily("etl_run_shards", "Shards of a run", labels=["run", "pipeline", "state"])
        unfetched = GaugeMetricFamily("etl_run_rows_unfetched", "Source rows not yet fetched",
                                      labels=["run", "pipeline"])
        in_flight = GaugeMetricFamily("etl_run_rows_in_flight", "Rows fetched, not yet loaded",
                                      labels=["run", "pipeline"])
        try:
            for run in self.state.list_runs(limit=self.max_runs):
                if run.status == RunStatus.COMPLETED:
                    continue
                checkpoints = self.state.list_checkpoints(run.run_id)
                labels = [run.run_id, run.pipeline]
                shards.add_metric(labels + [ShardStatus.DONE], sum(c.complete for c in checkpoints))
                shards.add_metric(labels + ["total"], len(checkpoints))
                fetched = sum(c.rows_fetched for c in checkpoints)
                settled = sum(c.rows_loaded + c.rows_quarantined for c in checkpoints)
                source_rows = run.params.get("source_rows")
                if isinstance(source_rows, int):
                    unfetched.add_metric(labels, max(0, source_rows - fetched))
                in_flight.add_metric(labels, max(0, fetched - settled))
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: cannot read the state store: %s", exc)
        yield shards
        yield unfetched
        yield in_flight


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a Prometheus histogram from its cumulative (upper bound, count)
    buckets, interpolating linearly inside the bucket (as PromQL's histogram_quantile)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
