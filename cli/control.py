"""Run control: `etl cancel RUN`, and `etl queues` as a group with `purge --run RUN`.

`etl queues` alone still shows the queue table (cli.queues.queues_command, whose options
it takes as they are); `etl queues purge --run RUN` removes one run's pending messages.
"""

from __future__ import annotations

from typing import Any

import click

from cli.common import err, out, settings
from etl.brokers import is_embedded
from cli.queues import queues_command
from etl.runner import cancel as cancel_run, purge as purge_run


@click.command("cancel")
@click.argument("run_id", metavar="RUN")
@click.option("--purge", is_flag=True,
              help="Also remove the run's pending messages from the broker's queue now "
                   "(distributed runs; without it, workers ack them without work).")
def cancel_command(run_id: str, purge: bool) -> None:
    """Cancel RUN: workers ack its messages without work, an embedded `etl run` stops.

    Steps already working finish (a load commits or rolls back; leases are released).
    `etl run --run-id RUN --resume` takes the run up again where it stopped."""
    conf = settings()
    done = cancel_run(run_id, purge=purge, settings=conf)
    if done.already:
        out.print(f"run {run_id} was cancelled already", markup=False, highlight=False)
    else:
        out.print(f"cancelled run {run_id} (was {done.was}); workers ack its remaining "
                  "messages without work", markup=False, highlight=False)
    if purge and not is_embedded(conf.broker_url):
        out.print(f"purged {done.purged} pending message(s) of run {run_id}", markup=False,
                  highlight=False)


def _show(**options: Any) -> None:
    ctx = click.get_current_context()
    if ctx.invoked_subcommand is None:
        ctx.invoke(queues_command, **options)


#: `etl queues`: the table of cli.queues when called alone, with subcommands beside it.
queues_group = click.Group("queues", params=list(queues_command.params), callback=_show,
                           invoke_without_command=True, help=queues_command.help,
                           short_help=queues_command.short_help)


@queues_group.command("purge")
@click.option("--run", "run_id", required=True, help="The run whose pending messages to remove.")
@click.option("--queue", help="Queue (default: the queue of the run's pipeline, else the "
                              "`queue` setting).")
def queues_purge(run_id: str, queue: str | None) -> None:
    """Remove RUN's pending messages from its queue and delay queue, leaving other runs'.

    Their result records end `cancelled`. The run's status is not changed: the purged work
    is missing work, which `etl run --run-id RUN` (or `etl reconcile`) sends again."""
    removed = purge_run(run_id, queue=queue, settings=settings())
    out.print(f"purged {removed} pending message(s) of run {run_id}", markup=False,
              highlight=False)
    if not removed:
        err.print("no pending message of that run was waiting", markup=False, highlight=False)
