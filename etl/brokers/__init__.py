"""Brokers by URL: the in-process StubBroker (`stub://`), RabbitMQ (`amqp://`) and Redis
(`redis://`), one module each.

A broker's module (etl.brokers.<kind>) says everything the toolkit does differently on it:
  EMBEDDED        True when the work runs inside `etl run` (no broker other processes share)
  EXAMPLE         how its URL looks, for error messages
  open_broker     a new Dramatiq broker for a URL
  owns            whether a Dramatiq broker is one of its kind
  queues_of       its Queues view (etl.brokers.base): counts and dead letters
  new_worker      a Dramatiq Worker tuned for it
  probe           connect once, raising its outage errors (a refused login included), so
                  `etl worker` stops at start instead of its consumers retrying forever
  outage_errors   the exceptions its client raises when the broker does not answer

A new broker is one such module plus one line in BROKERS. The modules are imported when a
URL first needs them, so importing this package imports neither pika nor redis.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING

from etl.core.errors import UnsupportedURL
from etl.core.urls import mask_url, scheme_of

if TYPE_CHECKING:
    import dramatiq

    from etl.brokers.base import Queues

log = logging.getLogger(__name__)

#: Each broker's kind (its module, etl.brokers.<kind>) and the URL schemes it answers.
BROKERS: dict[str, tuple[str, ...]] = {
    "stub": ("stub",),
    "rabbitmq": ("amqp", "amqps"),
    "redis": ("redis", "rediss"),
}

SCHEMES = tuple(scheme for schemes in BROKERS.values() for scheme in schemes)


def _module(kind: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{kind}")


def broker_kind(url: str) -> str:
    """"stub", "rabbitmq" or "redis" (a key of BROKERS); anything else is a clear error."""
    scheme = scheme_of(url)
    for kind, schemes in BROKERS.items():
        if scheme in schemes:
            return kind
    examples = ", ".join(_module(kind).EXAMPLE for kind in BROKERS)
    raise UnsupportedURL(f"unsupported broker URL {mask_url(url)!r}; use one of: {examples}")


def broker_module(url: str) -> ModuleType:
    """The module of the broker `url` names."""
    return _module(broker_kind(url))


def is_embedded(url: str) -> bool:
    """Whether the broker `url` names runs in-process (`stub://`): `etl run` does the work
    itself, and there are no queues for `etl worker`, `etl queues` or `etl reconcile`."""
    return bool(broker_module(url).EMBEDDED)


def open_broker(url: str) -> dramatiq.Broker:
    """A new broker for `url` (not made the global broker)."""
    module = broker_module(url)
    broker = module.open_broker(url)
    if not module.EMBEDDED:
        log.info("broker %s", mask_url(url))
    return broker


def queues_of(broker: dramatiq.Broker) -> Queues:
    """The Queues view of a RabbitMQ or Redis broker."""
    for kind in BROKERS:
        module = _module(kind)
        if module.owns(broker):
            return module.queues_of(broker)
    raise ValueError(f"no queue inspection for {type(broker).__name__}: queues live in the "
                     "process that runs them")


def outage_errors() -> tuple[type[BaseException], ...]:
    """What the brokers' clients raise when their broker does not answer."""
    return tuple(error for kind in BROKERS for error in _module(kind).outage_errors())


__all__ = ["BROKERS", "SCHEMES", "broker_kind", "broker_module", "is_embedded", "open_broker",
           "outage_errors", "queues_of"]
