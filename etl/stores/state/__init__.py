"""State store: open one by URL (`sqlite:///path` or `mongodb://...`)."""

from __future__ import annotations

from etl.core.errors import UnsupportedURL
from etl.core.urls import scheme_of
from etl.core.names import task_fingerprint  # re-exported: the stores' callers use it
from etl.stores.state.base import (
    Checkpoint,
    ErrorRecord,
    Fence,
    Lease,
    RawPayload,
    RunRecord,
    StateStore,
)

SCHEMES = ("sqlite", "mongodb", "mongodb+srv", "mongomock")


def open_state(url: str) -> StateStore:
    """The state store for `url`; an unknown scheme is a clear error naming the ones we know."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        from etl.stores.state.sqlite import SQLiteStateStore

        return SQLiteStateStore(url)
    if scheme in ("mongodb", "mongodb+srv", "mongomock"):
        from etl.stores.state.mongo import MongoStateStore

        return MongoStateStore(url)
    raise UnsupportedURL(
        f"unsupported state store URL scheme {scheme or '(none)'!r}; use one of: "
        "sqlite:///path/state.db, mongodb://host/db"
    )


__all__ = [
    "Checkpoint", "ErrorRecord", "Fence", "Lease", "RawPayload", "RunRecord", "StateStore",
    "open_state", "task_fingerprint",
]
