"""The in-process broker (`stub://`, the default): Dramatiq's StubBroker. `etl run` does the
work itself, in local worker processes; its queues live inside that process, so no other
command can count them, and there is nothing for an `etl worker` to consume.

Dramatiq is imported when a broker or a worker is made, not with this module: `etl run`
reads EMBEDDED before it starts parsing its source, and Dramatiq's import (~20 ms) then
overlaps the parse instead of delaying it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dramatiq

    from etl.brokers.base import Queues

#: The work runs inside `etl run`, not on a broker other processes share.
EMBEDDED = True

#: How its URL looks, for error messages.
EXAMPLE = "stub:// (in-process)"


def open_broker(url: str) -> dramatiq.Broker:
    from dramatiq.brokers.stub import StubBroker

    return StubBroker()


def owns(broker: dramatiq.Broker) -> bool:
    return type(broker).__name__ == "StubBroker"


def new_worker(broker: dramatiq.Broker, *, queues: set[str], threads: int) -> dramatiq.Worker:
    import dramatiq

    return dramatiq.Worker(broker, queues=queues, worker_threads=threads)


def probe(broker: dramatiq.Broker) -> None:
    """In process: nothing to reach."""


def outage_errors() -> tuple[type[BaseException], ...]:
    return ()  # in process: never away


def queues_of(broker: dramatiq.Broker) -> Queues:
    raise ValueError("no queue inspection for StubBroker: queues live in the process that runs them")
