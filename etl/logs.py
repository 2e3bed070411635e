"""Logging set-up: one handler on stderr, secrets in URLs masked in every record."""

from __future__ import annotations

import logging

from etl.urls import mask_url


class MaskSecrets(logging.Filter):
    """Rewrite each record's final message with passwords in URLs replaced by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(*, verbose: int = 0) -> None:
    """INFO for the toolkit with -v, DEBUG with -vv; Dramatiq and pika stay at WARNING."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("dramatiq", "pika", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
