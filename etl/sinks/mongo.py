"""A MongoDB collection as a sink: bulk upsert by the pipeline's key, so a batch written
twice is held once (a unique index on the key makes a second copy impossible).
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
from etl.sinks.base import Sink

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


class MongoSink(Sink):
    """A MongoDB collection, written by bulk upsert on `key` (`mongodb://`, or
    `mongomock://host/db` for an in-process fake; `client=` injects one for tests)."""

    def __init__(self, url: str, *, collection: str, key: Sequence[str],
                 database: str | None = None, client: Any = None, chunk: int = 1000) -> None:
        if isinstance(key, str) or not key:
            raise ValueError("MongoSink needs key= as a non-empty list of column names")
        self.url, self.collection_name = mask_url(url), collection
        self.key = [_safe_field(k) for k in key]
        self.database = database or database_of(url)
        self.chunk = max(1, chunk)
        self._raw_url, self._client = url, client
        self._collection: Any = None

    def __repr__(self) -> str:
        return f"MongoSink({self.url!r}, collection={self.collection_name!r}, key={self.key!r})"

    def describe(self) -> str:
        return (f"mongodb collection {self.database}.{self.collection_name} at {self.url} "
                f"(upsert on {', '.join(self.key)})")

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
        """Upsert every row by key; rows of the batch sharing a key: the last one wins (an
        unordered bulk write would apply them in no defined order). Returns the batch's row
        count."""
        from pymongo import ReplaceOne

        columns = [_safe_field(c) for c in frame.columns]
        if len(set(columns)) != len(columns):
            clashes = sorted({c for c in columns if columns.count(c) > 1})
            raise BatchError(f"run {run_id} shard {shard} batch {batch}: columns would share the "
                             f"MongoDB field name(s) {', '.join(clashes)} once made safe "
                             "('.' and '$' become '_'); rename them in a stage")
        missing = [k for k in self.key if k not in columns]
        if missing:
            raise BatchError(f"run {run_id} shard {shard} batch {batch}: the batch lacks the "
                             f"sink's key column(s) {', '.join(missing)}")  # permanent: no retry
        docs: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in frame.itertuples(index=False, name=None):
            doc = {c: _plain(v) for c, v in zip(columns, row)}
            # 1 and 1.0 are one key (as in MongoDB); a list or dict is compared by its text
            key = tuple(repr(doc[k]) if isinstance(doc[k], (list, dict)) else doc[k] for k in self.key)
            docs[key] = doc
        coll, ops = self._coll(), [
            ReplaceOne({k: d[k] for k in self.key}, d, upsert=True) for d in docs.values()]
        for start in range(0, len(ops), self.chunk):
            coll.bulk_write(ops[start:start + self.chunk], ordered=False)
        log.debug("%s: batch %s/%s/%s upserted %d row(s)", self.collection_name, run_id, shard,
                  batch, len(ops))
        return len(frame)

    def finish_run(self, run_id: str) -> None:
        """Nothing to do: upserts never leave a second copy to sweep."""

    def read_all(self) -> pd.DataFrame:
        return pd.DataFrame(list(self._coll().find({}, {"_id": 0})))


__all__ = ["MongoSink"]
