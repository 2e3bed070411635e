"""Errors the toolkit raises on purpose.

`EtlError` and its children carry a message written for the person running the job: the CLI
prints them as one clear line instead of a traceback. Anything else that escapes is a bug or
a transient failure, and is retried or logged with its traceback.
"""

from __future__ import annotations

from stages.errors import StageError


class EtlError(Exception):
    """Base class of every error the toolkit raises deliberately."""


class ConfigError(EtlError):
    """A setting, URL or config file is missing, unreadable or invalid."""


class UnsupportedURL(ConfigError):
    """A backend URL uses a scheme no backend handles."""


class SourceError(EtlError):
    """The source cannot be read (missing file, bad format, unknown column)."""


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


#: Every error raised on purpose with a message for the person running the job: printed as
#: one line, never retried. `stages` stands alone and has its own StageError.
USER_ERRORS: tuple[type[Exception], ...] = (EtlError, StageError)
