"""RabbitMQ (`amqp://`, `amqps://`): Dramatiq's RabbitmqBroker over pika.

Publisher confirms (`confirm_delivery`), so an enqueue returns only once the broker has the
message; queues are durable and messages persistent (Dramatiq's defaults). pika's own URL
options apply (`?heartbeat=30&connection_attempts=3`).
"""

from __future__ import annotations

from typing import Any, Iterator

import dramatiq
from dramatiq import Message

from etl.brokers.base import DeadLetter, QueueCounts, Queues, Removal
from etl.core.names import dead_letter_queue, delay_queue

#: Work is done here by `etl worker`s, not inside `etl run`.
EMBEDDED = False

#: How its URL looks, for error messages.
EXAMPLE = "amqp://user:pw@host:5672/vhost"


def open_broker(url: str) -> dramatiq.Broker:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=url, confirm_delivery=True)


def owns(broker: dramatiq.Broker) -> bool:
    return type(broker).__name__ == "RabbitmqBroker"


def new_worker(broker: dramatiq.Broker, *, queues: set[str], threads: int) -> dramatiq.Worker:
    """A worker that prefetches no more than it has threads, so no delivery waits unacked
    behind a long batch."""
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=1000)
    worker.queue_prefetch = threads
    return worker


def probe(broker: dramatiq.Broker) -> None:
    """Log in once, on a connection of its own: a refused login (ACCESS_REFUSED) or a broker
    that does not answer raises here, as Dramatiq's ConnectionClosed, instead of in consumer
    threads that would retry it forever."""
    import pika
    from dramatiq.errors import ConnectionClosed

    try:
        pika.BlockingConnection(broker.parameters).close()  # type: ignore[attr-defined]
    except pika.exceptions.AMQPConnectionError as exc:
        raise ConnectionClosed(exc) from None


def outage_errors() -> tuple[type[BaseException], ...]:
    """What pika raises when RabbitMQ does not answer."""
    import pika.exceptions

    return (pika.exceptions.AMQPConnectionError,)


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
            for name in (queue, delay_queue(queue), dead_letter_queue(queue)):
                channel.queue_delete(queue=name)
        finally:
            channel.connection.close()

    def counts(self, queue: str) -> QueueCounts:
        ready, consumers = self._depth(queue)
        delayed, _ = self._depth(delay_queue(queue))
        dead, _ = self._depth(dead_letter_queue(queue))
        return QueueCounts(queue, ready=ready, delayed=delayed, dead=dead, consumers=consumers)

    def _each_dead(self, queue: str, limit: int | None) -> Iterator[tuple[DeadLetter, Removal]]:
        """Dead letters read unacknowledged; removing one acknowledges it, and closing the
        connection returns the rest to the queue."""
        total, _ = self._depth(dead_letter_queue(queue))
        if not total:
            return
        channel = self._channel()
        try:
            for _ in range(total if limit is None else min(total, limit)):
                method, _props, body = channel.basic_get(dead_letter_queue(queue), auto_ack=False)
                if method is None:
                    break
                tag = method.delivery_tag
                yield DeadLetter(Message.decode(body)), lambda tag=tag: channel.basic_ack(tag)
        finally:
            if channel.connection.is_open:
                channel.connection.close()


def queues_of(broker: dramatiq.Broker) -> Queues:
    return RabbitmqQueues(broker)
