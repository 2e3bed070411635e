"""Task result store: every task's status lifecycle, result, error, timings and history.

Open one by URL: `sqlite:///path` (embedded default), `redis://` / `rediss://`, `mongodb://`.
"""

from __future__ import annotations

from etl.errors import UnsupportedURL
from results.base import ResultStore
from results.errors import InvalidTransition, JobNotFound, ResultNotFound
from results.models import FINISHED, JobResult, JobStatus, Transition

SCHEMES = "sqlite:///path.db, redis://host:6379/0, rediss://..., mongodb://host/db"


def open_results(url: str) -> ResultStore:
    """The result store for `url`; an unknown scheme is an error listing the supported ones."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
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


__all__ = ["FINISHED", "InvalidTransition", "JobNotFound", "JobResult", "JobStatus",
           "ResultNotFound", "ResultStore", "Transition", "open_results"]
