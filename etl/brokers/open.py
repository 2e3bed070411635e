"""Brokers by URL: the in-process StubBroker, RabbitMQ (`amqp://`) and Redis (`redis://`).

RabbitMQ: Dramatiq's RabbitmqBroker over pika with publisher confirms (`confirm_delivery`),
so an enqueue returns only once the broker has the message; queues are durable and
messages persistent (Dramatiq's defaults). pika's own URL options apply
(`?heartbeat=30&connection_attempts=3`).

Redis: Dramatiq's RedisBroker. Options Dramatiq takes as arguments are read from the URL's
query and removed before redis-py sees it:
  heartbeat_timeout   ms without a heartbeat before a worker's unacked messages are
                      requeued (Dramatiq's default 60000)
  maintenance_chance  out of a million commands, how many run that requeue (default 1000)
  dead_message_ttl    ms dead letters are kept (default 7 days)
  namespace           key prefix (default "dramatiq")
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq

from etl.core.errors import ConfigError, UnsupportedURL
from etl.core.urls import mask_url, scheme_of

log = logging.getLogger(__name__)

SCHEMES = ("stub", "amqp", "amqps", "redis", "rediss")

_REDIS_INT_OPTIONS = ("heartbeat_timeout", "maintenance_chance", "dead_message_ttl")


def broker_kind(url: str) -> str:
    """"stub", "rabbitmq" or "redis"; anything else is a clear error."""
    scheme = scheme_of(url) or url.split(":", 1)[0].lower()
    if scheme == "stub":
        return "stub"
    if scheme in ("amqp", "amqps"):
        return "rabbitmq"
    if scheme in ("redis", "rediss"):
        return "redis"
    raise UnsupportedURL(f"unsupported broker URL {mask_url(url)!r}; use one of: stub:// "
                         "(in-process), amqp://user:pw@host:5672/vhost, redis://host:6379/0")


def split_redis_options(url: str) -> tuple[str, dict[str, object]]:
    """The redis-py URL and the RedisBroker keyword arguments carried in its query."""
    parts = urlsplit(url)
    keep, options = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _REDIS_INT_OPTIONS:
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
    """A new broker for `url` (not made the global broker)."""
    kind = broker_kind(url)
    if kind == "stub":
        from dramatiq.brokers.stub import StubBroker

        return StubBroker()
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker: dramatiq.Broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        from dramatiq.brokers.redis import RedisBroker

        redis_url, options = split_redis_options(url)
        broker = RedisBroker(url=redis_url, **options)  # type: ignore[arg-type]
    log.info("broker %s", mask_url(url))
    return broker
