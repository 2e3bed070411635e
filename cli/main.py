"""The `etl` command line.

Errors the user can fix (bad config, missing file, unknown column...) are printed as one
line and exit with status 2; a run that ends with failed batches exits with status 1.
"""

from __future__ import annotations

import sys

import click

from cli import inspect, results, run
from etl.errors import EtlError
from etl.logs import setup_logging
from etl.urls import mask_url


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="dramatiq-etl")
def cli(verbose: int) -> None:
    """Crash-safe, exactly-once batch ETL on Dramatiq."""
    setup_logging(verbose=verbose)


cli.add_command(run.run_command)
cli.add_command(run.describe_command)
cli.add_command(inspect.status_command)
cli.add_command(inspect.checkpoints_command)
cli.add_command(inspect.errors_command)
cli.add_command(inspect.config_command)
cli.add_command(results.results_group)


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
    except EtlError as exc:
        click.echo(f"error: {mask_url(str(exc))}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
