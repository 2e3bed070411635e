"""Logging set-up: one handler on stderr, secrets in URLs masked in every record."""

from __future__ import annotations

import logging

from etl.core.urls import mask_url


class MaskSecrets(logging.Filter):
    """Rewrite each record's final message with passwords in URLs replaced by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class ExpectedErrors(logging.Filter):
    """Drop the traceback from a record about one of our own errors (USER_ERRORS): its message
    is written for the person running the job, and the full traceback is kept in
    TaskErrorLog (`etl errors --traceback`). Unexpected errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from etl.core.errors import USER_ERRORS

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, USER_ERRORS):
            record.msg = f"{record.getMessage()} {type(exc).__name__}: {exc}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def setup_logging(*, verbose: int = 0) -> None:
    """INFO for the toolkit with -v, DEBUG with -vv; Dramatiq and pika stay at WARNING."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ExpectedErrors())
    handler.addFilter(MaskSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("dramatiq", "pika", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if verbose < 2:  # pika logs a refused connection at ERROR with tracebacks; we say it once
        logging.getLogger("pika").setLevel(logging.CRITICAL)
