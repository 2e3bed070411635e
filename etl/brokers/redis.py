"""Redis (`redis://`, `rediss://`): Dramatiq's RedisBroker.

Options Dramatiq takes as arguments are read from the URL's query and removed before
redis-py sees it:
  heartbeat_timeout   ms without a heartbeat before a worker's unacked messages are
                      requeued (Dramatiq's default 60000)
  maintenance_chance  out of a million commands, how many run that requeue (default 1000)
  dead_message_ttl    ms dead letters are kept (default 7 days)
  namespace           key prefix (default "dramatiq")
"""

from __future__ import annotations

import time
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
from dramatiq import Message

from etl.brokers.base import DeadLetter, QueueCounts, Queues, Removal
from etl.core.errors import ConfigError
from etl.core.names import dead_letter_queue, delay_queue

#: Work is done here by `etl worker`s, not inside `etl run`.
EMBEDDED = False

#: How its URL looks, for error messages.
EXAMPLE = "redis://host:6379/0"

#: Longest pause of a worker's consumer between polls of a busy queue (ms).
POLL_MS = 100

_INT_OPTIONS = ("heartbeat_timeout", "maintenance_chance", "dead_message_ttl")


def split_redis_options(url: str) -> tuple[str, dict[str, object]]:
    """The redis-py URL and the RedisBroker keyword arguments carried in its query."""
    parts = urlsplit(url)
    keep, options = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _INT_OPTIONS:
            try:
                options[key] = int(value)
            except ValueError:
                raise ConfigError(f"broker URL option {key} must be an integer, got {value!r}") from None
        elif key == "namespace":
            options[key] = value
        else:
            keep.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(keep))), options


def open_broker(url: str) -> dramatiq.Broker:
    from dramatiq.brokers.redis import RedisBroker

    redis_url, options = split_redis_options(url)
    return RedisBroker(url=redis_url, **options)  # type: ignore[arg-type]


def owns(broker: dramatiq.Broker) -> bool:
    return type(broker).__name__ == "RedisBroker"


def new_worker(broker: dramatiq.Broker, *, queues: set[str], threads: int) -> dramatiq.Worker:
    """A worker polling often: Dramatiq's consumer sleeps up to worker_timeout between polls
    while its prefetch is full, so a short timeout keeps threads from idling between short
    batches."""
    return dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=POLL_MS)


def outage_errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis does not answer."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class RedisQueues(Queues):
    """Redis through the broker's own client and Dramatiq's key layout."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        self.client = broker.client  # type: ignore[attr-defined]
        self.ns = broker.namespace  # type: ignore[attr-defined]

    def counts(self, queue: str) -> QueueCounts:
        base = f"{self.ns}:{queue}"
        pipe = self.client.pipeline()
        pipe.llen(base).hlen(f"{base}.msgs").hlen(f"{delay_queue(base)}.msgs")
        pipe.zcard(dead_letter_queue(base))
        timeout = self.broker.heartbeat_timeout  # type: ignore[attr-defined]
        pipe.zcount(f"{self.ns}:__heartbeats__", int(time.time() * 1000) - timeout, "+inf")
        ready, stored, delayed, dead, workers = pipe.execute()
        return QueueCounts(queue, ready=ready, delayed=delayed, dead=dead, consumers=workers,
                           in_flight=max(0, stored - ready))

    def delete(self, queue: str) -> None:
        self.broker.flush(queue)  # the queue and its delay queue
        self.purge_dead(queue)

    def _each_dead(self, queue: str, limit: int | None) -> Iterator[tuple[DeadLetter, Removal]]:
        key = dead_letter_queue(f"{self.ns}:{queue}")
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
    return RedisQueues(broker)
