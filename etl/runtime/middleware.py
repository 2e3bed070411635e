"""Dramatiq middleware of the toolkit.

ErrorLog writes each failure of an ETL message to the state store: the shard's last_error on
every failed attempt (the step, the batch and the cause), and, once Dramatiq gives up on the
message (retries exhausted, or an error marked permanent), a TaskErrorLog entry with
traceback and context and the shard marked failed. It logs one WARNING line per failed batch,
with its cause; an attempt that will be retried is an INFO line (-v), tracebacks DEBUG (-vv). It sits before Retries in the middleware list, so its after-hook runs after Retries
has decided whether the message is retried or dead-lettered. URL passwords are masked in all
it writes, and in the traceback a retried or dead-lettered message carries to the broker.
"""

from __future__ import annotations

import logging
import traceback as tb
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from etl.core.logs import cause_of
from etl.core.names import stage_of_actor
from etl.core.statuses import ShardStatus
from etl.core.urls import mask_url
from etl.runtime.context import ContextCache
from etl.stores.state import ErrorRecord

log = logging.getLogger(__name__)


class ErrorLog(Middleware):
    """Record failures of fetch/clean/load messages in TaskErrorLog and TaskCheckpoint."""

    def __init__(self, contexts: ContextCache) -> None:
        self.contexts = contexts

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int) -> None:
        """A retried message carries its last traceback (Retries puts it in the options) to
        the broker, and a dead letter keeps it there: mask it before it leaves."""
        trace = message.options.get("traceback")
        if trace:
            message.options["traceback"] = mask_url(trace)

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if exception is None:
            return  # the common case, first: every message pays for this hook
        self.before_enqueue(broker, message, 0)  # Retries put the traceback in; a dead letter keeps it
        stage = stage_of_actor(message.actor_name)
        if stage is None:
            return
        run_id, shard, batch = message.args[:3]
        cause = cause_of(exception)  # "Type: cause", one line, no run/shard/batch prefix
        try:
            state = self.contexts.get(run_id).state
            final = bool(getattr(message, "failed", False))
            # the shard's last error says which step and batch, and the cause in full
            state.set_shard_status(run_id, shard, ShardStatus.FAILED if final else ShardStatus.RUNNING,
                                   last_error=f"{stage} batch {batch}: {cause}")
            attempts = message.options.get("retries", 1)  # Retries has counted this one
            if final:
                trace = "".join(tb.format_exception(type(exception), exception, exception.__traceback__))
                state.log_error(ErrorRecord(
                    run_id=run_id, stage=stage, shard=shard, batch=batch,
                    error_type=type(exception).__name__, message=str(exception), traceback=trace,
                    context={"message_id": message.message_id, "queue": message.queue_name,
                             "attempts": attempts, "retries": max(0, attempts - 1)}))
                # one line per failed batch; the traceback is in TaskErrorLog, and at -vv
                log.warning("%s of run %s shard %s batch %s failed: %s (traceback: `etl errors "
                            "--traceback`)", stage, run_id, shard, batch, cause)
            else:
                log.info("%s of run %s shard %s batch %s failed (attempt %s), will retry: %s",
                         stage, run_id, shard, batch, attempts, cause)
            log.debug("%s of run %s shard %s batch %s raised", stage, run_id, shard, batch,
                      exc_info=exception)
        except Exception:  # noqa: BLE001 - never let error reporting break the worker
            log.exception("could not record the failure of message %s", message.message_id)
