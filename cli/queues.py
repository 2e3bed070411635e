"""`etl queues` and `etl dlq list|retry|purge`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from dramatiq import Message
from rich.table import Table

from cli.common import err, out, result_store, settings, state_store, to_json
from etl.brokers import is_embedded, open_broker, queues_of
from etl.core.config import Settings
from etl.core.errors import ConfigError, EtlError
from etl.core.names import stage_of_actor
from etl.core.statuses import RunStatus, ShardStatus
from etl.core.logs import without_where
from etl.core.urls import mask_url
from etl.pipeline import load_pipeline
from etl.stores import results_ttl
from etl.brokers.base import DeadLetter, Match, Queues, of_run
from etl.stores.state import ErrorRecord
from results.middleware import ResultRecorder

#: How many of the newest runs `etl queues` looks at for pipelines with queues of their own.
RECENT_RUNS = 50

queue_option = click.option("--queue", "queue", help="Queue (default: the queue of the --run's "
                            "pipeline, else the `queue` setting).")


def _run_queue(conf: Settings, run_id: str) -> str:
    """The queue of the run's pipeline (Pipeline.queue), or the `queue` setting."""
    try:
        state = state_store(conf)
        try:
            run = state.get_run(run_id)
        finally:
            state.close()
        if run is not None and run.params.get("pipeline_spec"):
            return load_pipeline(run.params["pipeline_spec"]).queue_or(conf.queue)
    except EtlError as exc:
        err.print(f"[yellow]cannot tell the queue of run {run_id} ({exc}); using {conf.queue}[/]")
    return conf.queue


def _queues(queue: str | None, run_id: str | None = None) -> tuple[Queues, str, object]:
    conf = settings()
    if is_embedded(conf.broker_url):
        raise ConfigError("no broker configured (stub://): queues live inside `etl run`; set "
                          "ETL_BROKER_URL to amqp://... or redis://...")
    name = queue or (_run_queue(conf, run_id) if run_id else conf.queue)
    broker = open_broker(conf.broker_url)
    return queues_of(broker), name, broker


def _matcher(run_id: str | None, message_ids: tuple[str, ...]) -> Match:
    in_run = of_run(run_id) if run_id else None

    def match(message: Message) -> bool:
        if message_ids and message.message_id not in message_ids:
            return False
        return in_run is None or in_run(message)
    return match


def _queues_in_use(conf: Settings) -> list[str]:
    """The `queue` setting and the queues named by the pipelines of the newest runs."""
    names = [conf.queue]
    try:
        state = state_store(conf)
        try:
            runs = state.list_runs(limit=RECENT_RUNS)
        finally:
            state.close()
    except Exception as exc:  # noqa: BLE001 - the broker's counts are still worth showing
        err.print(f"[yellow]cannot list runs ({type(exc).__name__}); showing {conf.queue} only[/]")
        return names
    for spec in dict.fromkeys(r.params.get("pipeline_spec") for r in runs):
        try:
            queue = load_pipeline(spec).queue if spec else None
        except EtlError:
            continue  # a pipeline this machine cannot import: its queue is unknown here
        if queue:
            names.append(queue)
    return list(dict.fromkeys(names))


@click.command("queues")
@click.option("--queue", "names", multiple=True,
              help="Queue to show (repeatable; default: the `queue` setting and the queues "
                   "of the pipelines of the newest runs).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON array of queues.")
def queues_command(names: tuple[str, ...], as_json: bool = False) -> None:
    """Depth, delayed, dead-letter depth and consumers of the ETL queue(s)."""
    queues, _, broker = _queues(None)
    try:
        counts = [queues.counts(name) for name in dict.fromkeys(names or _queues_in_use(settings()))]
    finally:
        broker.close()  # type: ignore[attr-defined]
    if as_json:
        out.print_json(to_json(counts))
        return
    table = Table(title="queues")
    table.add_column("queue")
    for column in ("ready", "in flight", "delayed", "dead letters", "consumers"):
        table.add_column(column, justify="right")
    for c in counts:
        table.add_row(c.queue, str(c.ready), "-" if c.in_flight is None else str(c.in_flight),
                      str(c.delayed), str(c.dead), str(c.consumers))
    out.print(table)


@click.group("dlq")
def dlq_group() -> None:
    """Dead-lettered messages: list, re-drive after a fix, purge."""


@dlq_group.command("list")
@queue_option
@click.option("--run", "run_id", help="Only this run's messages.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON array of dead letters.")
def dlq_list(queue: str | None, run_id: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, oldest first, with their last error."""
    queues, name, broker = _queues(queue, run_id)
    try:
        letters = queues.dead_letters(name, limit=limit, match=of_run(run_id) if run_id else None)
    finally:
        broker.close()  # type: ignore[attr-defined]
    failures = _last_failures(settings(), letters)
    rows = []
    for letter in letters:
        m = letter.message
        args = list(m.args) + [None] * 3
        logged = failures.get((m.actor_name, *args[:3]))
        # the error: TaskErrorLog's, written when the message failed for good (a dead letter
        # on RabbitMQ is the body as it was delivered, without that last error), else the
        # last line of the traceback a retry left in the message
        trace = (m.options.get("traceback") or "").strip().splitlines()[-1:] or [""]
        error = f"{logged.error_type}: {logged.message}" if logged else trace[0]
        since = letter.dead_since or (logged.at.timestamp() if logged else None)
        rows.append({"message_id": m.message_id, "actor": m.actor_name, "run": args[0],
                     "shard": args[1], "batch": args[2], "retries": m.options.get("retries", 0),
                     "dead_since": (dt.datetime.fromtimestamp(since, dt.timezone.utc)
                                    .isoformat(timespec="seconds") if since else None),
                     "error": " ".join(without_where(mask_url(error)).split()) or None})
    if as_json:
        out.print_json(to_json(rows))
        return
    table = Table(title=f"dead letters of {name}: {len(letters)}")
    for column in ("message id", "actor", "run", "shard", "batch", "retries", "dead since", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["message_id"], row["actor"], str(row["run"]), str(row["shard"]),
                      str(row["batch"]), str(row["retries"]), row["dead_since"] or "-",
                      (row["error"] or "-")[-400:])
    out.print(table)


def _last_failures(conf: Settings, letters: list[DeadLetter]) -> dict[tuple[Any, ...], ErrorRecord]:
    """The newest TaskErrorLog entry of each dead ETL message, by (actor, run, shard,
    batch); none when the state store cannot be read (the broker's view is still shown)."""
    runs = {letter.message.args[0] for letter in letters
            if stage_of_actor(letter.message.actor_name) and letter.message.args}
    found: dict[tuple[Any, ...], ErrorRecord] = {}
    if not runs:
        return found
    try:
        state = state_store(conf)
        try:
            for run_id in runs:
                for error in state.list_errors(run_id, limit=10_000):  # newest first
                    for letter in letters:
                        m = letter.message
                        if (m.args[:3] == (error.run_id, error.shard, error.batch)
                                and stage_of_actor(m.actor_name) == error.stage):
                            found.setdefault((m.actor_name, *m.args[:3]), error)
        finally:
            state.close()
    except Exception as exc:  # noqa: BLE001 - the dead letters are still worth listing
        err.print(f"[yellow]cannot read the errors of the dead letters ({type(exc).__name__}); "
                  "showing what the broker holds[/]")
    return found


@dlq_group.command("retry")
@queue_option
@click.option("--run", "run_id", help="Only this run's messages.")
@click.option("--message-id", "message_ids", multiple=True, help="Only these messages.")
def dlq_retry(queue: str | None, run_id: str | None, message_ids: tuple[str, ...]) -> None:
    """Re-drive dead letters to their queue, retry counts reset (after fixing the cause and
    restarting the workers, which run the code they started with)."""
    queues, name, broker = _queues(queue, run_id)
    conf = settings()
    results = result_store(conf, required=False)
    recorder = ResultRecorder(results, ttl=results_ttl(conf)) if results is not None else None
    if recorder is not None:
        broker.add_middleware(recorder)  # type: ignore[attr-defined]  # new jobs get records
    try:
        moved = queues.redrive(name, match=_matcher(run_id, message_ids))
    finally:
        if recorder is not None:
            recorder.flush()
        broker.close()  # type: ignore[attr-defined]
    state = state_store(settings())
    for message in moved:
        if stage_of_actor(message.actor_name) is not None and len(message.args) >= 2:
            state.set_shard_status(message.args[0], message.args[1], ShardStatus.RUNNING)
            state.set_run_status(message.args[0], RunStatus.RUNNING)
    out.print(f"re-drove {len(moved)} message(s) to {name}")
    if not moved:
        err.print("no dead letter matched")
    elif not is_embedded(conf.broker_url):
        err.print("[yellow]note[/] a worker loads pipeline and stage code when it starts: "
                  "workers started before the fix still run the old code and fail these "
                  "messages again; restart them (`etl worker`) to take the fix", soft_wrap=True)


@dlq_group.command("purge")
@queue_option
@click.option("--run", "run_id", help="Only this run's messages.")
@click.option("--yes", is_flag=True, help="Do not ask.")
def dlq_purge(queue: str | None, run_id: str | None, yes: bool) -> None:
    """Drop dead letters for good (their work stays undone: `etl reconcile` re-sends it)."""
    queues, name, broker = _queues(queue, run_id)
    if not yes:
        try:
            click.confirm(f"drop the dead letters of {name}"
                          + (f" for run {run_id}" if run_id else "") + "?", abort=True)
        except click.Abort:
            broker.close()  # type: ignore[attr-defined]
            raise
    try:
        dropped = queues.purge_dead(name, match=_matcher(run_id, ()) if run_id else None)
    finally:
        broker.close()  # type: ignore[attr-defined]
    out.print(f"dropped {dropped} dead letter(s) from {name}")
