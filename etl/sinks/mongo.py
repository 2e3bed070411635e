"""A MongoDB collection as a sink: a merge by the pipeline's key, one document per key.

Every document keeps its row's sequence (SEQ_COLUMN, etl.sinks.base). A row replaces the held
document only when its sequence is greater: the upsert's filter is the key plus
`_etl_seq < this row's`, and a unique index on the key turns the insert it falls back to,
when a newer (or the same) row is held, into a duplicate-key error that is the no-op. So a
batch written twice, batches loaded in any order and runs loaded over each other all leave
the newest row per key. A duplicate-key error can also mean another process inserted the key
first: those rows are tried once more, when their filter sees the held document.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any, Sequence

import numpy as np
import pandas as pd

from etl.core.errors import BatchError
from etl.core.mongo_client import connect, database_of
from etl.core.urls import mask_url
from etl.sinks.base import SEQ_COLUMN, Reachable, Sequenced, Sink, check_disposition

#: MongoDB's duplicate-key error code.
_DUPLICATE_KEY = 11000

log = logging.getLogger(__name__)


def _safe_field(name: Any) -> str:
    """MongoDB field names may not start with "$" nor contain ".": both become "_"."""
    return str(name).replace(".", "_").replace("$", "_")


def _plain(value: Any) -> Any:
    """A value pymongo can encode: None for missing, Python scalars, datetimes, lists."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if value != value else value  # NaN
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value).to_pydatetime()
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)  # BSON has no date-only type
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):  # nested keys made safe for MongoDB, as SafeMongoKeys does
        from stages.mongo import safe_names

        keys = list(value)
        return {name: _plain(value[k]) for name, k in zip(safe_names(keys), keys)}
    return value


class MongoSink(Sink, Sequenced, Reachable):
    """A MongoDB collection merged by key (`mongodb://`, or `mongomock://host/db` for an
    in-process fake; `client=` injects one for tests). `key` defaults to the pipeline's."""

    def __init__(self, url: str, *, collection: str, key: Sequence[str] | None = None,
                 database: str | None = None, client: Any = None, chunk: int = 1000,
                 write_disposition: str = "merge") -> None:
        self.key = tuple(_safe_field(k) for k in check_disposition(
            "MongoSink", write_disposition, key, allowed=("merge",)))
        self.write_disposition = write_disposition
        self.url, self.collection_name = mask_url(url), collection
        self.database = database or database_of(url)
        self.chunk = max(1, chunk)
        self._raw_url, self._client = url, client
        self._collection: Any = None

    def __repr__(self) -> str:
        return f"MongoSink({self.url!r}, collection={self.collection_name!r}, key={list(self.key)!r})"

    def describe(self) -> str:
        return (f"mongodb collection {self.database}.{self.collection_name} at {self.url} "
                f"(merge on {', '.join(self.key) or 'the pipeline key'}, newest row wins)")

    def with_key(self, key: Sequence[str]) -> "MongoSink":
        return MongoSink(self._raw_url, collection=self.collection_name, key=list(key),
                         database=self.database, client=self._client, chunk=self.chunk)

    def reach(self) -> str:
        """The server answers a ping (the sink's own client, else a new one, closed after:
        no connection is left to cross a fork). Nothing is written."""
        from etl.sinks.reach import PROBE_TIMEOUT_S

        client = self._client if self._client is not None else \
            connect(self._raw_url, timeout_ms=PROBE_TIMEOUT_S * 1000)
        try:
            client.admin.command("ping")
        finally:
            if client is not self._client:
                client.close()
        return "the server answers"

    def _coll(self) -> Any:
        """The collection, connected and indexed on first use (so a pipeline definition
        can be imported without a server)."""
        if self._collection is None:
            if self._client is None:
                self._client = connect(self._raw_url)
            coll = self._client[self.database][self.collection_name]
            coll.create_index([(k, 1) for k in self.key], unique=True, name="etl_key")
            self._collection = coll
        return self._collection

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        """Merge every row by key, newest sequence first; returns the batch's row count."""
        where = f"run {run_id} shard {shard} batch {batch}"
        if not self.key:
            raise BatchError(f"{where}: MongoSink has no key: give key= or use it in a Pipeline")
        columns = [_safe_field(c) for c in frame.columns]
        if len(set(columns)) != len(columns):
            clashes = sorted({c for c in columns if columns.count(c) > 1})
            raise BatchError(f"{where}: columns would share the MongoDB field name(s) "
                             f"{', '.join(clashes)} once made safe ('.' and '$' become '_'); "
                             "rename them in a stage")
        missing = [k for k in (*self.key, SEQ_COLUMN) if k not in columns]
        if missing:
            raise BatchError(f"{where}: the batch lacks the column(s) {', '.join(missing)} "
                             "the sink merges on")  # permanent: no retry
        docs: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in frame.itertuples(index=False, name=None):
            doc = {c: _plain(v) for c, v in zip(columns, row)}
            # 1 and 1.0 are one key (as in MongoDB); a list or dict is compared by its text
            key = tuple(repr(doc[k]) if isinstance(doc[k], (list, dict)) else doc[k] for k in self.key)
            held = docs.get(key)
            if held is None or held[SEQ_COLUMN] < doc[SEQ_COLUMN]:
                docs[key] = doc
        pending = list(docs.values())
        for _ in range(2):  # the second pass: keys another process inserted meanwhile
            pending = self._merge(pending)
            if not pending:
                break
        log.debug("%s: %s merged %d row(s)", self.collection_name, where, len(docs))
        return len(frame)

    def _merge(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upsert `docs` where the held document is older; the documents whose upsert met
        a duplicate key (held newer or the same, or inserted by another process)."""
        from pymongo import ReplaceOne
        from pymongo.errors import BulkWriteError

        coll, clashed = self._coll(), []
        for start in range(0, len(docs), self.chunk):
            chunk = docs[start:start + self.chunk]
            ops = [ReplaceOne({**{k: d[k] for k in self.key}, SEQ_COLUMN: {"$lt": d[SEQ_COLUMN]}},
                              d, upsert=True) for d in chunk]
            try:
                coll.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                clashed.extend(chunk[e["index"]] for e in errors)
        return clashed

    def finish_run(self, run_id: str, *, first_seq: str = "") -> None:
        """Nothing to do: a merge never leaves a second copy to sweep."""

    def read_all(self) -> pd.DataFrame:
        return pd.DataFrame(list(self._coll().find({}, {"_id": 0, SEQ_COLUMN: 0})))


__all__ = ["MongoSink"]
