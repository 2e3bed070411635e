"""Metrics of a run as its state store recorded them, for `etl metrics` where no worker
serves any: an embedded `etl run` counts in its own process and exits, so its counters are
gone when the command asks, but the run's checkpoints and error log keep the same counts.

  etl_run_rows{run,pipeline,kind}         fetched / cleaned / quarantined / loaded
  etl_run_batches{run,pipeline,stage}     fetched / cleaned / loaded
  etl_run_shard_states{run,pipeline,state}  done / failed / total (etl_run_shards, the
                                          live gauge, is of unfinished runs only)
  etl_run_errors{run,pipeline,stage}      TaskErrorLog entries (stage "schema": drifted batches)
  etl_run_seconds{run,pipeline}           creation to last status change (a run still
                                          working: to now)
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from etl.core.clock import utcnow
from etl.core.statuses import RunStatus, ShardStatus
from etl.stores.state import RunRecord, StateStore


class RecordedRun(Collector):
    """Gauges of one run (`run`) read from `state` when collected."""

    def __init__(self, state: StateStore, run: RunRecord) -> None:
        self.state, self.run = state, run

    def collect(self) -> Iterator[GaugeMetricFamily]:
        run = self.state.get_run(self.run.run_id) or self.run
        labels = [run.run_id, run.pipeline]
        checkpoints = self.state.list_checkpoints(run.run_id)
        rows = GaugeMetricFamily("etl_run_rows", "Rows of the run by kind, as recorded",
                                 labels=["run", "pipeline", "kind"])
        for kind in ("fetched", "cleaned", "quarantined", "loaded"):
            rows.add_metric(labels + [kind], sum(getattr(c, f"rows_{kind}") for c in checkpoints))
        yield rows
        batches = GaugeMetricFamily("etl_run_batches", "Batches of the run per stage, as recorded",
                                    labels=["run", "pipeline", "stage"])
        for stage, field in (("fetch", "fetched"), ("clean", "cleaned"), ("load", "loaded")):
            batches.add_metric(labels + [stage],
                               sum(getattr(c, f"batches_{field}") for c in checkpoints))
        yield batches
        shards = GaugeMetricFamily("etl_run_shard_states", "Shards of the run by state, as recorded",
                                   labels=["run", "pipeline", "state"])
        shards.add_metric(labels + [ShardStatus.DONE], sum(c.complete for c in checkpoints))
        shards.add_metric(labels + [ShardStatus.FAILED],
                          sum(c.status == ShardStatus.FAILED and not c.complete for c in checkpoints))
        shards.add_metric(labels + ["total"], len(checkpoints))
        yield shards
        errors = GaugeMetricFamily("etl_run_errors", "TaskErrorLog entries of the run per stage",
                                   labels=["run", "pipeline", "stage"])
        for stage, count in sorted(Counter(
                e.stage for e in self.state.list_errors(run.run_id, limit=100_000)).items()):
            errors.add_metric(labels + [stage], count)
        yield errors
        seconds = GaugeMetricFamily("etl_run_seconds", "Time of the run so far",
                                    labels=["run", "pipeline"])
        end = utcnow() if run.status == RunStatus.RUNNING else run.updated_at
        seconds.add_metric(labels, max(0.0, (end - run.created_at).total_seconds()))
        yield seconds


__all__ = ["RecordedRun"]
