"""The `etl` command line.

Errors the user can fix (bad config, missing file, unknown column...) are printed as one
line and exit with status 2; a run that ends with failed batches exits with status 1; a
broker or store that does not answer is one line and exit status 3.
"""

from __future__ import annotations

import sys

import click

from cli import inspect, metrics, quarantine, queues, results, run, worker
from etl.core.errors import USER_ERRORS
from etl.core.logs import setup_logging
from etl.core.urls import mask_url


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="dramatiq-etl")
def cli(verbose: int) -> None:
    """Crash-safe, exactly-once batch ETL on Dramatiq."""
    setup_logging(verbose=verbose)


cli.add_command(run.run_command)
cli.add_command(run.describe_command)
cli.add_command(run.backfill_command)
cli.add_command(inspect.status_command)
cli.add_command(inspect.checkpoints_command)
cli.add_command(inspect.errors_command)
cli.add_command(inspect.config_command)
cli.add_command(results.results_group)
cli.add_command(worker.worker_command)
cli.add_command(worker.reconcile_command)
cli.add_command(queues.queues_command)
cli.add_command(queues.dlq_group)
cli.add_command(metrics.metrics_command)
cli.add_command(quarantine.quarantine_group)


def main() -> None:
    """Console-script entry point: turn toolkit errors into one clear line."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"error: {mask_url(str(exc))}", err=True)
        sys.exit(2)
    except SERVICE_ERRORS as exc:  # a broker or store that does not answer: not a bug
        detail = str(exc) or (repr(exc.args[0]) if exc.args else "") or "no detail"
        click.echo(f"error: a service did not answer ({type(exc).__name__}: "
                   f"{mask_url(detail)}); check it and run the command again", err=True)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


def _service_errors() -> tuple[type[BaseException], ...]:
    from dramatiq.errors import BrokerError
    from pymongo.errors import ConnectionFailure

    from etl.brokers import outage_errors

    return (BrokerError, *outage_errors(), ConnectionFailure, ConnectionRefusedError)


#: Outages of the services the CLI talks to; they end a command with exit status 3.
SERVICE_ERRORS = _service_errors()


if __name__ == "__main__":
    main()
