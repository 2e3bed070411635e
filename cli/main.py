"""The `etl` command line.

Errors the user can fix (bad config, missing file, unknown column, a stage given an argument
it does not take, an optional package not installed...) are printed as one line and exit
with status 2; a run that ends with failed batches exits with status 1; a broker, store or
database that refuses us (wrong password, no S3 credentials) or does not answer, or a disk
that refuses a write (full, read-only, no permission), is one line and exit status 3. A run
that is cancelled (`etl cancel`), found so without --resume or cancelled while `etl run`
works it, is one line and exit status 4.
"""

from __future__ import annotations

import os
import sys

import click

from cli.commands import COMMANDS
from etl.core.errors import (USER_ERRORS, MissingExtra, ServiceUnreachable, StoreUnwritable,
                             is_environment_error)
from etl.core.extras import missing_extra
from etl.core.logs import setup_logging
from etl.core.urls import mask_url


class LazyGroup(click.Group):
    """The `etl` group: a subcommand's module is imported when that command runs, so
    `etl --help` and a command that needs no broker do not import pandas, pyarrow, rich or a
    broker client. The help list shows each command's first docstring line, kept beside its
    import path in cli.commands (a test holds the two together)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        import importlib

        module, _, attribute = entry.target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, _short_help(COMMANDS[name].summary, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _short_help(text: str, limit: int) -> str:
    """A command's summary as the help list shows it: its first sentence (a period before
    a word not in lower case), shortened at a word to `limit` with "..." (what click's
    make_default_short_help did; click 8.3 deprecates it)."""
    import textwrap

    words = text.split()
    for position, word in enumerate(words):
        if word.endswith(".") and (position == len(words) - 1
                                   or not words[position + 1][0].islower()):
            words = words[:position + 1]
            break
    shown = " ".join(words)
    if len(shown) <= limit:
        return shown
    return textwrap.shorten(shown, max(limit, 3), placeholder="...", break_on_hyphens=False)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="dramatiq-etl")
def cli(verbose: int) -> None:
    """Crash-safe, exactly-once batch ETL on Dramatiq."""
    setup_logging(verbose=verbose)


def main() -> None:
    """Console-script entry point: turn toolkit errors into one clear line.

    The current directory goes first on sys.path, as `python -m` puts it there, so
    `etl run -p mypkg.pipelines:x` finds the project's own modules without PYTHONPATH."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - sorted below; a bug keeps its traceback
        failure = _failure(exc)
        if failure is None:
            raise
        status, text = failure
        click.echo(f"error: {' '.join(mask_url(text).split())}", err=True)
        sys.exit(status)
    sys.exit(code if isinstance(code, int) else 0)


def _failure(exc: Exception) -> tuple[int, str] | None:
    """The exit status and the line for an error the user can act on; None for a bug.

    3: a disk that refuses a write, a service that refuses us or does not answer (S3
    credentials included); 2: a mistake in the command, config or pipeline, and an optional
    package that is not installed (with the `pip install` that brings it)."""
    if is_environment_error(exc):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return 3, (str(exc) if isinstance(exc, StoreUnwritable)
                   else f"cannot write{where}: {exc.strerror}")  # type: ignore[attr-defined]
    if isinstance(exc, ServiceUnreachable):
        return 3, str(exc)
    extra = exc if isinstance(exc, MissingExtra) else missing_extra(exc)
    if extra is not None:  # also under a toolkit error that wrapped the ImportError
        return 2, str(extra)
    if isinstance(exc, USER_ERRORS):
        return 2, str(exc)
    if isinstance(exc, service_errors()):  # a broker or store that does not answer: not a bug
        return 3, _service_line(exc)
    return None


def service_errors() -> tuple[type[BaseException], ...]:
    """Outages of the services the CLI talks to, and an object store (S3) that refuses us:
    they end a command with exit status 3. Looked up only when a command fails, so the
    clients are not imported before; a client that is not installed has no errors to give."""
    from dramatiq.errors import BrokerError

    from etl.brokers import outage_errors

    return (BrokerError, *outage_errors(), ConnectionRefusedError, *_mongo_errors(),
            *_s3_errors(), *_sql_errors())


def _mongo_errors() -> tuple[type[BaseException], ...]:
    try:
        from pymongo.errors import ConnectionFailure
    except ImportError:  # the mongo extra is not installed: no MongoDB error can happen
        return ()
    return (ConnectionFailure,)


def _s3_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # the s3 extra is not installed: no S3 error can happen
        return ()
    return (BotoCoreError, ClientError)


def _sql_errors() -> tuple[type[BaseException], ...]:
    """A database that refuses the connection or the login (OperationalError covers both;
    a table or statement problem is a ProgrammingError and stays a traceback)."""
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # the sql extra is not installed: no database error can happen
        return ()
    return (OperationalError,)


#: Words of a service error that say it refused the login rather than did not answer.
_LOGIN_REFUSED = ("access_refused", "access denied", "authentication failed",
                  "password authentication", "auth failed", "invalid username-password",
                  "wrongpass", "noauth", "not authorized", "does not exist")


def _service_line(exc: BaseException) -> str:
    """What to say about a service error, in one line."""
    detail = str(getattr(exc, "orig", None) or exc) or (repr(exc.args[0]) if exc.args else "") \
        or "no detail"
    for cut in (", Topology Description:", " (configured timeouts:", " (Background on this error"):
        detail = detail.split(cut)[0]  # pymongo and SQLAlchemy append pages of diagnostics
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
        return (f"S3: {detail}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile, "
                "AWS_PROFILE) and run the command again")
    if name == "ClientError":
        return f"S3 refused the request ({detail}); check the bucket, the key and the credentials"
    if any(word in detail.lower() for word in _LOGIN_REFUSED):
        return (f"a service refused the login ({name}: {detail}); check the user and password "
                "in its URL and run the command again")
    return f"a service did not answer ({name}: {detail}); check it and run the command again"


def entry() -> None:
    """The `etl` console script (and `python -m cli.main`): main(), then leave without the
    interpreter's final teardown. Arrow's native thread pools can abort the process there
    ("terminate called without an active exception", SIGABRT) after all the work is done
    and reported (apache/arrow#34314); the exit handlers still run and the output is
    flushed, then the process ends with main's status."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    import atexit

    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing, the writers' flushes
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
