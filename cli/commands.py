"""The `etl` subcommands: where each lives and the line `etl --help` shows for it.

Kept apart from the commands themselves so `etl --help` imports none of them.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    target: str  # "module:attribute" of the click command
    summary: str  # its first docstring line, as `etl --help` lists it


COMMANDS: dict[str, Entry] = {
    "run": Entry("cli.run:run_command",
                 "Run fetch -> clean -> load over every shard; resumes an unfinished run."),
    "describe": Entry("cli.run:describe_command",
                      "Print a pipeline: source, shard plan, stages, sink."),
    "backfill": Entry("cli.run:backfill_command",
                      "Load the rows with START <= window column < END, once, whoever "
                      "triggers it."),
    "status": Entry("cli.inspect:status_command",
                    "Per-shard progress of RUN (default: the newest run)."),
    "runs": Entry("cli.inspect:runs_command",
                  "Runs, newest first: id, pipeline, status, rows, started, took."),
    "checkpoints": Entry("cli.inspect:checkpoints_command",
                         "TaskCheckpoint rows of the newest run (--run RUN, --all)."),
    "errors": Entry("cli.inspect:errors_command", "List TaskErrorLog entries, newest first."),
    "config": Entry("cli.inspect:config_command",
                    "Show the settings in force (passwords masked) and where each came from."),
    "results": Entry("cli.results:results_group",
                     "Task results: status lifecycle, result, error, timings, history."),
    "worker": Entry("cli.worker:worker_command",
                    "Work the ETL queue(s) of the configured broker until SIGTERM or Ctrl-C."),
    "reconcile": Entry("cli.worker:reconcile_command",
                       "Re-send the work RUN_ID is missing (no live lease, no message on its "
                       "way)."),
    "queues": Entry("cli.control:queues_group",
                    "Depth, delayed, dead-letter depth and consumers of the ETL queue(s)."),
    "cancel": Entry("cli.control:cancel_command",
                    "Cancel RUN: workers ack its messages without work, an embedded `etl run` "
                    "stops."),
    "dlq": Entry("cli.queues:dlq_group",
                 "Dead-lettered messages: list, re-drive after a fix, purge."),
    "metrics": Entry("cli.metrics:metrics_command",
                     "A snapshot of the metrics: counters, gauges, and per stage the batch "
                     "latency p50/p95 and the rows per second of busy time (rows through the "
                     "stage / time in its batches)."),
    "serve": Entry("cli.serve:serve_command",
                   "HTTP API and dashboard: start, watch and read runs (http://HOST:PORT/)."),
    "quarantine": Entry("cli.quarantine:quarantine_group",
                        "Rows the stages rejected: look at them, and re-drive them after a "
                        "fix."),
}
