"""What is in a queue, and the dead-letter queue's messages: count, list, re-drive, purge.

Dramatiq keeps dead letters in `<queue>.XQ` on both brokers (RabbitMQ: a queue the main
queue dead-letters into; Redis: a sorted set plus a hash of message data). A broker's
`Queues` class (etl.brokers.rabbitmq, etl.brokers.redis) reads them with the broker's own
client; re-driving goes through Dramatiq's `enqueue`, so a re-driven message is an ordinary
Dramatiq message again, its retry count reset.

Re-driving is at least once: a crash between the enqueue and the removal from the
dead-letter queue leaves a copy behind, which the dedup ledger turns into a no-op.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import dramatiq
from dramatiq import Message

from etl.core.names import DEFERRED_OPTION, queue_of_delayed

#: Options that belong to a delivery, not to the message: dropped when re-driving it.
_DELIVERY_OPTIONS = ("retries", "traceback", "eta", "requeue_timestamp", "redis_message_id",
                     DEFERRED_OPTION)


@dataclass
class QueueCounts:
    """Depths of one queue: ready, in flight (unacked; Redis only), delayed, dead letters,
    and consumers (RabbitMQ: consumers of the queue; Redis: live worker processes)."""

    queue: str
    ready: int
    delayed: int
    dead: int
    consumers: int
    in_flight: int | None = None

    @property
    def outstanding(self) -> int:
        """Messages not yet done, as far as the broker tells (unacked ones on RabbitMQ are
        not visible to a client)."""
        return self.ready + self.delayed + (self.in_flight or 0)


@dataclass
class DeadLetter:
    message: Message
    dead_since: float | None = None  # epoch seconds, when the broker tells


def redrivable(message: Message) -> Message:
    """`message` as a fresh delivery: a new message id (the failed one keeps its finished
    result record; the re-driven one gets its own), retry count and delivery options reset,
    and the id it was re-driven from kept in `redriven_from`."""
    options = {k: v for k, v in message.options.items() if k not in _DELIVERY_OPTIONS}
    options["redriven_from"] = message.message_id
    queue = queue_of_delayed(message.queue_name)
    return Message(queue_name=queue, actor_name=message.actor_name, args=message.args,
                   kwargs=message.kwargs, options=options, message_id=str(uuid.uuid4()),
                   message_timestamp=int(time.time() * 1000))


Match = Callable[[Message], bool]


Removal = Callable[[], None]


class Queues:
    """Counts of a queue, and its dead letters: listed, re-driven, purged. A broker's class
    says how to count and how to walk its dead letters (`_each_dead`); what is done with
    them is the same on every broker."""

    broker: dramatiq.Broker

    def counts(self, queue: str) -> QueueCounts:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of connections of our own."""

    def delete(self, queue: str) -> None:
        """Drop `queue` with its delay and dead-letter queues and all they hold (a retired
        pipeline's queue, a test's or a benchmark's)."""
        raise NotImplementedError

    def _each_dead(self, queue: str, limit: int | None) -> Iterator[tuple[DeadLetter, Removal]]:
        """Each dead letter once (the first `limit` when given), with the call that removes
        it from the dead-letter queue; what is not removed stays."""
        raise NotImplementedError

    def dead_letters(self, queue: str, *, limit: int = 100,
                     match: Match | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first (matching ones, when given), at most `limit`."""
        found = []
        for letter, _remove in self._each_dead(queue, limit if match is None else None):
            if match is None or match(letter.message):
                found.append(letter)
                if len(found) >= limit:
                    break
        return found

    def redrive(self, queue: str, *, match: Match) -> list[Message]:
        """Move matching dead letters back to `queue`; the messages re-driven."""
        moved = []
        for letter, remove in self._each_dead(queue, None):
            if match(letter.message):
                self.broker.enqueue(redrivable(letter.message))
                remove()
                moved.append(letter.message)
        return moved

    def purge_dead(self, queue: str, *, match: Match | None = None) -> int:
        """Drop dead letters (matching ones, or all); how many were dropped."""
        dropped = 0
        for letter, remove in self._each_dead(queue, None):
            if match is None or match(letter.message):
                remove()
                dropped += 1
        return dropped


def of_run(run_id: str) -> Match:
    """Matches the ETL messages of one run (their first argument is the run id)."""
    return lambda message: message.args[:1] == (run_id,)


__all__ = ["DeadLetter", "Match", "QueueCounts", "Queues", "Removal", "of_run", "redrivable"]
