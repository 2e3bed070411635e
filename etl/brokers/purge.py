"""Remove one run's pending messages from a queue, leaving every other run's in place.

Neither broker can delete a message by content, so each pass reads what is waiting and
removes only the messages that match:

* RabbitMQ: the queue and its delay queue are read unacknowledged on a connection of their
  own; matching messages are acknowledged (gone), and closing the connection hands the rest
  back to the queue, where RabbitMQ puts them back in their places.
* Redis: the ids waiting in the queue's list (and its delay queue's) are read with their
  data; matching ones are removed from the list and the message hash by one script per
  chunk, which removes a message only if it is still waiting (a worker that took it
  meanwhile keeps it).

Messages a worker holds already (prefetched, or a delayed message a worker's delay
consumer keeps until its eta) are not the queue's to give: the workers' cancel check acks
those without work (etl.runtime.cancel).
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq import Message

from etl.brokers.base import Match
from etl.core.errors import ConfigError
from etl.core.names import delay_queue

log = logging.getLogger(__name__)

#: Messages read per round trip (Redis).
CHUNK = 1000

_REMOVE_WAITING = """
local removed = {}
for _, id in ipairs(ARGV) do
  if redis.call('lrem', KEYS[1], 1, id) > 0 then
    redis.call('hdel', KEYS[2], id)
    removed[#removed + 1] = id
  end
end
return removed
"""


def purge_matching(broker: dramatiq.Broker, queue: str, *, match: Match) -> list[Message]:
    """Remove the messages of `queue` and its delay queue that `match`; the removed ones."""
    kind = type(broker).__name__
    removed: list[Message] = []
    for name in (queue, delay_queue(queue)):
        if kind == "RabbitmqBroker":
            removed += _purge_rabbitmq(broker, name, match)
        elif kind == "RedisBroker":
            removed += _purge_redis(broker, name, match)
        else:
            raise ConfigError(f"cannot purge messages of a {kind}: only RabbitMQ and Redis queues")
    log.info("purged %d message(s) from %s", len(removed), queue)
    return removed


def _purge_rabbitmq(broker: dramatiq.Broker, queue: str, match: Match) -> list[Message]:
    import pika

    connection = pika.BlockingConnection(broker.parameters)  # type: ignore[attr-defined]
    removed = []
    try:
        channel = connection.channel()
        try:
            depth = channel.queue_declare(queue=queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return []  # no such queue: nothing waits there
            raise
        for _ in range(depth):
            method, _props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            message = _decode(body)
            if message is not None and match(message):
                channel.basic_ack(method.delivery_tag)
                removed.append(message)
    finally:
        if connection.is_open:
            connection.close()  # what was read and not acknowledged goes back to the queue
    return removed


def _purge_redis(broker: dramatiq.Broker, queue: str, match: Match) -> list[Message]:
    client: Any = broker.client  # type: ignore[attr-defined]
    key = f"{broker.namespace}:{queue}"  # type: ignore[attr-defined]
    script = client.register_script(_REMOVE_WAITING)
    waiting = client.lrange(key, 0, -1)
    removed = []
    for start in range(0, len(waiting), CHUNK):
        ids = waiting[start:start + CHUNK]
        chosen: dict[bytes, Message] = {}
        for redis_id, data in zip(ids, client.hmget(f"{key}.msgs", ids)):
            message = _decode(data) if data is not None else None
            if message is not None and match(message):
                chosen[redis_id] = message
        if chosen:
            gone = script(keys=[key, f"{key}.msgs"], args=list(chosen))
            removed += [chosen[i] for i in gone if i in chosen]
    return removed


def _decode(body: bytes) -> Message | None:
    try:
        return Message.decode(body)
    except Exception:  # noqa: BLE001 - not a Dramatiq message: not ours to judge, keep it
        return None


__all__ = ["purge_matching"]
