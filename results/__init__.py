"""Task result store: every task's status lifecycle, result, error, timings and history.

Open one by URL: `sqlite:///path` (embedded default), `redis://` / `rediss://`, `mongodb://`.
"""

from __future__ import annotations

import logging

from etl.core.errors import EtlError, UnsupportedURL
from etl.core.urls import mask_url, scheme_of
from results.base import ResultStore
from results.errors import InvalidTransition, JobNotFound, ResultNotFound
from results.models import FINISHED, JobResult, JobStatus, Transition

SCHEMES = "sqlite:///path.db, redis://host:6379/0, rediss://..., mongodb://host/db"


def open_results(url: str) -> ResultStore:
    """The result store for `url`; an unknown scheme is an error listing the supported ones."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        from results.sqlite import SQLiteResultStore

        return SQLiteResultStore(url)
    if scheme in ("redis", "rediss"):
        from results.redis import RedisResultStore

        return RedisResultStore(url)
    if scheme in ("mongodb", "mongodb+srv", "mongomock"):
        from results.mongo import MongoResultStore

        return MongoResultStore(url)
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
