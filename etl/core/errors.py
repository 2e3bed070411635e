"""Errors the toolkit raises on purpose.

`EtlError` and its children carry a message written for the person running the job: the CLI
prints them as one clear line instead of a traceback. Anything else that escapes is a bug or
a transient failure, and is retried or logged with its traceback.
"""

from __future__ import annotations

import errno

from stages.errors import StageError


class EtlError(Exception):
    """Base class of every error the toolkit raises deliberately."""


class ConfigError(EtlError):
    """A setting, URL or config file is missing, unreadable or invalid."""


class UnsupportedURL(ConfigError):
    """A backend URL uses a scheme no backend handles."""


class SourceError(EtlError):
    """The source cannot be read (missing file, bad format, unknown column)."""


class ServiceUnreachable(EtlError):
    """A database, broker or store refused the connection or the login, or did not answer:
    not a mistake in the pipeline; the CLI ends with one line and exit status 3."""


class SourceUnreachable(SourceError, ServiceUnreachable):
    """The source's database cannot be reached with the URL given (refused, wrong
    password, unknown host)."""


class SinkUnreachable(ServiceUnreachable):
    """The sink cannot be reached or written before an embedded run starts (a database that
    refuses the login or does not answer, a folder the machine refuses, a bucket that is not
    there): one line naming the sink, instead of every batch failing and being retried."""


class BatchError(EtlError):
    """One batch cannot be processed; the message names run, shard, batch and object key.

    A BatchError is permanent: retrying the same batch gives the same failure, so the actor
    does not retry it and the batch goes to the dead-letter queue and TaskErrorLog.
    """


class ObjectNotFound(EtlError):
    """An object key does not exist in the object store."""

    def __init__(self, key: str, where: str = "") -> None:
        self.key = key
        super().__init__(f"object not found: {key}" + (f" in {where}" if where else ""))


class LeaseLost(EtlError):
    """The worker no longer holds the lease of the task it was working on (fencing)."""


class StoreUnwritable(EtlError):
    """The machine refused a write: a full disk, a read-only file system, no permission.
    Retrying does not help until someone frees space or fixes the path (exit status 3)."""


class MissingExtra(ConfigError):
    """An optional package a feature needs is not installed; the message says which
    `pip install 'dramatiq-etl[extra]'` brings it (exit status 2, like any setup mistake)."""


class StoreCorrupt(ConfigError):
    """A store's file is not what it should be (not a SQLite database, truncated)."""


#: OS errors that say the environment refuses, not that the work is wrong or the service
#: is slow: retrying the same write in a moment gives the same answer.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.EDQUOT})


def is_environment_error(exc: BaseException) -> bool:
    """A full disk, a read-only file system or a missing permission, however it surfaced."""
    return isinstance(exc, StoreUnwritable) or (
        isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS)


#: Every error raised on purpose with a message for the person running the job: printed as
#: one line, never retried. `stages` stands alone and has its own StageError.
USER_ERRORS: tuple[type[Exception], ...] = (EtlError, StageError)
