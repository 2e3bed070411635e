"""Logging set-up: one handler on stderr, secrets in URLs masked in every record."""

from __future__ import annotations

import logging
import re

from etl.core.urls import mask_url

#: The place a batch error's message starts with ("run R shard S batch B (object URI): "):
#: a log line or a status column that already says where shows what follows it, the cause.
_WHERE = re.compile(r"run \S+ shard \d+ batch \d+(?: \(object [^)]*\))?: ")


def without_where(text: str) -> str:
    """`text` (an error's "Type: message") without the run/shard/batch/object prefix our
    batch errors start their message with: "BatchError: run r shard 0 batch 3 (object
    file:///...): amount is not a number" -> "BatchError: amount is not a number"."""
    return _WHERE.sub("", text, count=1)


def cause_of(exc: BaseException) -> str:
    """An exception as one line, "Type: cause": the where-prefix of a batch error dropped,
    and the type of the exception it wraps (`raise BatchError(...) from exc`) named, since
    the wrapper's message carries only the wrapped one's text. Whitespace is folded, so a
    multi-line message stays one log line."""
    inner = exc.__cause__
    name = type(inner).__name__ if inner is not None and str(inner) and str(inner) in str(exc) \
        else type(exc).__name__
    text = " ".join(without_where(str(exc)).split())
    return mask_url(f"{name}: {text}" if text else name)


class MaskSecrets(logging.Filter):
    """Rewrite each record's final message, and its traceback, with passwords in URLs
    replaced by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # what Formatter.format would print
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_url(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_url(record.stack_info)
        return True


class ExpectedErrors(logging.Filter):
    """Drop the traceback from a record about one of our own errors (USER_ERRORS): its message
    is written for the person running the job, and the full traceback is kept in
    TaskErrorLog (`etl errors --traceback`). Unexpected errors keep theirs, and a DEBUG
    record (-vv) keeps its traceback whatever the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        from etl.core.errors import USER_ERRORS

        if record.levelno <= logging.DEBUG:
            return True  # -vv asked for tracebacks
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, USER_ERRORS):
            record.msg = f"{record.getMessage()} {type(exc).__name__}: {exc}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class DramatiqEcho(logging.Filter):
    """Drop Dramatiq's own lines about a failed ETL message ("Failed to process message ...
    with unhandled exception" with its traceback, "Retries exceeded"): ErrorLog says each
    failure in one line and keeps the traceback in TaskErrorLog (`etl errors --traceback`).
    Shown again with -vv."""

    ECHOES = ("Failed to process message %s with unhandled exception.", "Retries exceeded for message %r.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("dramatiq.") and record.msg in self.ECHOES)


class FloodGuard(logging.Filter):
    """A failure repeated over many batches is said once in full, then counted: the first
    record of a kind keeps its traceback, the next `repeats` keep one line each, and the rest
    are held back and summed up when logging shuts down (`etl errors` has every one).

    A kind is the logger, the level, the message template and the exception type, so the
    20th "Failed to process message" with the same OSError is a repeat, a new error is not."""

    def __init__(self, *, repeats: int = 3) -> None:
        super().__init__()
        self.repeats = repeats
        self.seen: dict[tuple[str, int, str, str], int] = {}
        self.first: dict[tuple[str, int, str, str], str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        kind = (record.name, record.levelno, str(record.msg), type(exc).__name__ if exc else "")
        count = self.seen[kind] = self.seen.get(kind, 0) + 1
        if count == 1:
            self.first[kind] = record.getMessage().splitlines()[0][:200]
            return True
        if count > 1 + self.repeats:
            return False
        if exc is not None:  # one line: the first of its kind carried the traceback
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True

    def summary(self) -> list[str]:
        """One line per kind of which some records were held back."""
        return [f"... and {count - 1 - self.repeats} more like: {mask_url(self.first[kind])}"
                for kind, count in self.seen.items() if count > 1 + self.repeats]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, with the flood guard's summary written when logging shuts down (at exit,
    and in a forked worker process before it ends)."""

    def __init__(self, guard: FloodGuard) -> None:
        super().__init__()
        self.guard = guard

    def write_summary(self) -> None:
        """Write the summary of what was held back so far, and start counting afresh."""
        for line in self.guard.summary():
            self.stream.write(line + "\n")
        self.guard.seen.clear()
        self.flush()

    def close(self) -> None:
        try:
            self.write_summary()
        finally:
            super().close()


def summarize_floods() -> None:
    """Write the flood guard's summary now. The work that flooded is over (an embedded run
    worked in this process), so the counts come before the run's closing lines, as a forked
    worker's do when it ends."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _StderrHandler):
            handler.write_summary()


def setup_logging(*, verbose: int = 0) -> None:
    """INFO for the toolkit with -v, DEBUG with -vv; Dramatiq and pika stay at WARNING."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    guard = FloodGuard(repeats=3 if verbose < 2 else 1_000_000)
    handler = _StderrHandler(guard)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbose < 2:
        handler.addFilter(DramatiqEcho())
    handler.addFilter(ExpectedErrors())
    handler.addFilter(guard)
    handler.addFilter(MaskSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("dramatiq", "pika", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if verbose < 2:  # pika logs a refused connection at ERROR with tracebacks; we say it once
        logging.getLogger("pika").setLevel(logging.CRITICAL)
