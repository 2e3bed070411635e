"""MongoDB clients from URLs, shared by the state store, the result store and MongoSink.

`mongodb://` and `mongodb+srv://` connect with pymongo (tz-aware, so times come back UTC);
`mongomock://any/dbname` gives an in-process mongomock client (tests, notebooks).
"""

from __future__ import annotations

from typing import Any

from etl.core.urls import parse_url


def connect(url: str, *, timeout_ms: int = 10_000) -> Any:
    """A new client for `url`; `timeout_ms` bounds server selection and socket waits."""
    if url.startswith("mongomock://"):
        import mongomock

        return mongomock.MongoClient(tz_aware=True)
    import pymongo

    return pymongo.MongoClient(url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms,
                               socketTimeoutMS=timeout_ms)


def database_of(url: str) -> str:
    """The database named by the URL's path (`mongodb://host/dbname?opts`), "etl" if none."""
    return parse_url(url).database or "etl"
