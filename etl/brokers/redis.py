"""Redis (`redis://`, `rediss://`): Dramatiq's RedisBroker.

Options Dramatiq takes as arguments are read from the URL's query and removed before
redis-py sees it:
  heartbeat_timeout   ms without a heartbeat before a worker's unacked messages are
                      requeued (here 2000; Dramatiq's own default is 60000)
  maintenance_chance  out of a million commands, how many run that requeue (default 1000)
  dead_message_ttl    ms dead letters are kept (default 7 days)
  namespace           key prefix (default "dramatiq")

A dead worker's messages come back within seconds: Dramatiq's worker sends its heartbeat
only when it fetches (not while all its threads are busy) and requeues a dead worker's
messages only on a random command, so `etl worker` keeps both on a timer of its own. Every
HEARTBEAT_TIMEOUT/6 (at most 1 s) a thread sends this process's heartbeat and runs the
maintenance that requeues the unacknowledged messages of workers silent for longer than
heartbeat_timeout, on each queue it consumes. A worker killed mid-batch has its messages
back on the queue after about heartbeat_timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
from dramatiq import Message

from etl.brokers.base import DeadLetter, QueueCounts, Queues, Removal
from etl.core.errors import ConfigError
from etl.core.names import dead_letter_queue, delay_queue

log = logging.getLogger(__name__)

#: Work is done here by `etl worker`s, not inside `etl run`.
EMBEDDED = False

#: How its URL looks, for error messages.
EXAMPLE = "redis://host:6379/0"

#: Longest pause of a worker's consumer between polls of a busy queue (ms).
POLL_MS = 100

#: Default heartbeat_timeout (ms): a worker silent this long is dead, its messages requeued.
HEARTBEAT_TIMEOUT = 2000

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
    options.setdefault("heartbeat_timeout", HEARTBEAT_TIMEOUT)
    return RedisBroker(url=redis_url, **options)  # type: ignore[arg-type]


def owns(broker: dramatiq.Broker) -> bool:
    return type(broker).__name__ == "RedisBroker"


def new_worker(broker: dramatiq.Broker, *, queues: set[str], threads: int) -> dramatiq.Worker:
    """A worker polling often (Dramatiq's consumer sleeps up to worker_timeout between polls
    while its prefetch is full, so a short timeout keeps threads from idling between short
    batches) that keeps its heartbeat and the requeue of dead workers' messages on a timer."""
    return _Worker(broker, queues=queues, worker_threads=threads, worker_timeout=POLL_MS)


class _Worker(dramatiq.Worker):
    """Dramatiq's Worker plus the heartbeat-and-maintenance thread of this module."""

    def __init__(self, broker: dramatiq.Broker, **kwargs: Any) -> None:
        super().__init__(broker, **kwargs)
        self._keeper = _Keepalive(broker, sorted(kwargs.get("queues") or ()))

    def start(self) -> None:
        super().start()
        self._keeper.start()

    def stop(self, *args: Any, **kwargs: Any) -> None:
        self._keeper.stop()
        super().stop(*args, **kwargs)


class _Keepalive:
    """Every heartbeat_timeout/6 (at most 1 s): this process's heartbeat, and maintenance on
    each queue it consumes and their delay queues (requeue what dead workers held)."""

    def __init__(self, broker: dramatiq.Broker, queues: list[str]) -> None:
        self.broker = broker
        self.queues = queues
        self.interval = min(1.0, broker.heartbeat_timeout / 6000)  # type: ignore[attr-defined]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="etl-redis-keepalive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - an outage: the consumers report it; beat on
                log.debug("redis heartbeat failed", exc_info=True)

    def beat(self) -> None:
        """One heartbeat and one maintenance pass, by Dramatiq's own dispatch script (its
        arguments: command, timestamp, queue, worker id, heartbeat timeout, dead message
        TTL, do maintenance, max unpack size)."""
        broker: Any = self.broker
        unpack = broker._max_unpack_size() if hasattr(broker, "_max_unpack_size") else 1000
        for queue in self.queues:
            for name in (queue, delay_queue(queue)):
                broker.scripts["dispatch"](keys=[broker.namespace], args=[
                    "qsize", int(time.time() * 1000), name, broker.broker_id,
                    broker.heartbeat_timeout, broker.dead_message_ttl, 1, unpack])


def probe(broker: dramatiq.Broker) -> None:
    """Reach Redis once (a refused password or an unreachable server raises here)."""
    broker.client.ping()  # type: ignore[attr-defined]


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
