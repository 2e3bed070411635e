"""Task result store: every task's status lifecycle, result, error, timings and history.

Open one by URL: `sqlite:///path` (embedded default), `redis://` / `rediss://`, `mongodb://`,
`postgresql://` and `mysql://` / `mariadb://` (SQLAlchemy, the `sql` extra); `none` records
nothing (etl.stores.open_results). `?key_prefix=app` lets several applications share one
server or file: it prefixes Redis keys, and names the MongoDB collection or SQL table
`app_JobResult`.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit

from etl.core.errors import ConfigError, EtlError, UnsupportedURL
from etl.core.urls import mask_url, scheme_of
from results.base import ResultStore
from results.errors import InvalidTransition, JobNotFound, ResultNotFound
from results.models import FINISHED, JobResult, JobStatus, Transition

SCHEMES = ("sqlite:///path.db, redis://host:6379/0, rediss://..., mongodb://host/db, "
           "postgresql://host/db, mysql://host/db, mariadb://host/db")


def _key_prefix(url: str) -> tuple[str, str | None]:
    """`url` without its `key_prefix` query option, and that option's value (None: absent).
    The option names the store's keys (Redis), collection (MongoDB) or table (SQL), so several
    applications can share one server; drivers would refuse it as an unknown option."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for name, value in pairs if name == "key_prefix"), None)
    if prefix is None:
        return url, None
    if not prefix or not all(c.isalnum() or c in "_-" for c in prefix):
        raise ConfigError(f"result store {mask_url(url)}: key_prefix must be letters, digits, "
                          f"- or _, not {prefix!r}")
    query = urlencode([(name, value) for name, value in pairs if name != "key_prefix"])
    # cut by hand: urlunsplit would fold sqlite://// (an absolute path) into sqlite://
    head, _, rest = url.partition("?")
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return head + (f"?{query}" if query else "") + fragment, prefix


def open_results(url: str) -> ResultStore:
    """The result store for `url`; an unknown scheme is an error listing the supported ones.
    `?key_prefix=app` prefixes Redis keys (default `etl`), or names the MongoDB collection
    or SQL table `app_JobResult` (default `JobResult`)."""
    scheme = scheme_of(url)
    url, prefix = _key_prefix(url)
    table = f"{prefix}_JobResult" if prefix else "JobResult"
    if scheme == "sqlite":
        from results.sqlite import SQLiteResultStore

        return SQLiteResultStore(url, table=table)
    if scheme in ("redis", "rediss"):
        from results.redis import RedisResultStore

        return RedisResultStore(url, prefix=prefix or "etl")
    if scheme in ("mongodb", "mongodb+srv", "mongomock"):
        from results.mongo import MongoResultStore

        return MongoResultStore(url, collection=table)
    if scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mariadb"):
        from results.sql import SqlResultStore

        return SqlResultStore(url, table=table)
    raise UnsupportedURL(f"unsupported result store URL scheme {scheme or '(none)'!r}; "
                         f"use one of: {SCHEMES}")


def open_results_or_none(url: str) -> ResultStore | None:
    """The result store for `url`, or None when it does not answer: recording results must
    never stop a run or a worker, so an outage at start-up is a logged warning and the work
    goes on unrecorded. A malformed URL is still an error: that is a mistake to fix, not an
    outage to ride out."""
    try:
        return open_results(url)
    except EtlError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver's connection error
        logging.getLogger(__name__).warning(
            "result store %s unavailable (%s: %s); going on without recording results",
            mask_url(url), type(exc).__name__, mask_url(str(exc)))
        return None


__all__ = ["FINISHED", "InvalidTransition", "JobNotFound", "JobResult", "JobStatus",
           "ResultNotFound", "ResultStore", "Transition", "open_results",
           "open_results_or_none"]
