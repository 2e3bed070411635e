"""What is in a queue, and the dead-letter queue's messages: count, list, re-drive, purge.

Dramatiq keeps dead letters in `<queue>.XQ` on both brokers (RabbitMQ: a queue the main
queue dead-letters into; Redis: a sorted set plus a hash of message data). These classes
read them with the brokers' own clients and re-drive through Dramatiq's `enqueue`, so a
re-driven message is an ordinary Dramatiq message again, its retry count reset.

Re-driving is at least once: a crash between the enqueue and the removal from the
dead-letter queue leaves a copy behind, which the dedup ledger turns into a no-op.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import dramatiq
from dramatiq import Message

#: Options that belong to a delivery, not to the message: dropped when re-driving it.
_DELIVERY_OPTIONS = ("retries", "traceback", "eta", "requeue_timestamp", "redis_message_id",
                     "etl_deferred")


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
    queue = message.queue_name.removesuffix(".DQ")
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


class RabbitmqQueues(Queues):
    """RabbitMQ through pika, on connections of its own: one kept for counting (a waiting
    `etl run` counts every second), a fresh one for each pass over the dead letters (closing
    it returns what was read and not acknowledged)."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        self._connection: Any = None
        self._counting: Any = None

    def _channel(self) -> Any:
        import pika

        params = self.broker.parameters  # type: ignore[attr-defined]
        return pika.BlockingConnection(params).channel()

    def _counting_channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._counting = None
            self._connection = self._channel().connection
        if self._counting is None or not self._counting.is_open:
            self._counting = self._connection.channel()
        return self._counting

    def _depth(self, queue: str) -> tuple[int, int]:
        import pika

        try:
            ok = self._counting_channel().queue_declare(queue=queue, passive=True)
            return ok.method.message_count, ok.method.consumer_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._counting = None  # the broker closes a channel that asked for a missing queue
            if exc.reply_code == 404:
                return 0, 0
            raise
        except pika.exceptions.AMQPConnectionError:
            self._connection = None
            raise

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        self._connection = self._counting = None

    def delete(self, queue: str) -> None:
        channel = self._channel()
        try:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(queue=name)
        finally:
            channel.connection.close()

    def counts(self, queue: str) -> QueueCounts:
        ready, consumers = self._depth(queue)
        delayed, _ = self._depth(f"{queue}.DQ")
        dead, _ = self._depth(f"{queue}.XQ")
        return QueueCounts(queue, ready=ready, delayed=delayed, dead=dead, consumers=consumers)

    def _each_dead(self, queue: str, limit: int | None) -> Iterator[tuple[DeadLetter, Removal]]:
        """Dead letters read unacknowledged; removing one acknowledges it, and closing the
        connection returns the rest to the queue."""
        total, _ = self._depth(f"{queue}.XQ")
        if not total:
            return
        channel = self._channel()
        try:
            for _ in range(total if limit is None else min(total, limit)):
                method, _props, body = channel.basic_get(f"{queue}.XQ", auto_ack=False)
                if method is None:
                    break
                tag = method.delivery_tag
                yield DeadLetter(Message.decode(body)), lambda tag=tag: channel.basic_ack(tag)
        finally:
            if channel.connection.is_open:
                channel.connection.close()


class RedisQueues(Queues):
    """Redis through the broker's own client and Dramatiq's key layout."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        self.client = broker.client  # type: ignore[attr-defined]
        self.ns = broker.namespace  # type: ignore[attr-defined]

    def counts(self, queue: str) -> QueueCounts:
        base = f"{self.ns}:{queue}"
        pipe = self.client.pipeline()
        pipe.llen(base).hlen(f"{base}.msgs").hlen(f"{base}.DQ.msgs").zcard(f"{base}.XQ")
        timeout = self.broker.heartbeat_timeout  # type: ignore[attr-defined]
        pipe.zcount(f"{self.ns}:__heartbeats__", int(time.time() * 1000) - timeout, "+inf")
        ready, stored, delayed, dead, workers = pipe.execute()
        return QueueCounts(queue, ready=ready, delayed=delayed, dead=dead, consumers=workers,
                           in_flight=max(0, stored - ready))

    def delete(self, queue: str) -> None:
        self.broker.flush(queue)  # the queue and its delay queue
        self.purge_dead(queue)

    def _each_dead(self, queue: str, limit: int | None) -> Iterator[tuple[DeadLetter, Removal]]:
        key = f"{self.ns}:{queue}.XQ"
        ids = self.client.zrange(key, 0, -1 if limit is None else limit - 1, withscores=True)
        if not ids:
            return
        datas = self.client.hmget(f"{key}.msgs", [i for i, _ in ids])
        for (redis_id, score), data in zip(ids, datas):
            if data is not None:
                yield (DeadLetter(Message.decode(data), score / 1000),
                       lambda redis_id=redis_id: self._drop(key, redis_id))

    def _drop(self, key: str, redis_id: bytes | str) -> None:
        self.client.pipeline().zrem(key, redis_id).hdel(f"{key}.msgs", redis_id).execute()


def queues_of(broker: dramatiq.Broker) -> Queues:
    """The Queues view of a RabbitMQ or Redis broker."""
    name = type(broker).__name__
    if name == "RabbitmqBroker":
        return RabbitmqQueues(broker)
    if name == "RedisBroker":
        return RedisQueues(broker)
    raise ValueError(f"no queue inspection for {name}: queues live in the process that runs them")
