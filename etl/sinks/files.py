"""Sinks: where cleaned batches end. Every write is idempotent, so a batch written twice
(after a crash between the write and its ledger entry) is held once.

* ParquetSink: one deterministic file per batch, `part-<run>-<shard>-<batch>.parquet`,
  written atomically. With write_disposition "replace" (default), finishing a run removes
  the files of other runs, so a finished dataset holds exactly one run's rows; "append"
  keeps them.
* MongoSink: bulk upsert by the pipeline's key (a unique index on it makes a second copy
  impossible).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl.core.errors import BatchError
from etl.core.files import TEMP_PREFIX, atomic_write
from etl.core.mongo_client import connect, database_of
from etl.core.urls import mask_url

log = logging.getLogger(__name__)

DISPOSITIONS = ("replace", "append")

#: A part file's name; the run id is everything between "part-" and the shard number.
_PART = re.compile(r"^part-(?P<run>.+)-(?P<shard>\d{5,})-(?P<batch>\d{6,})\.parquet$")
#: Temporary files older than this are leftovers of a crashed write and are swept.
_STALE_TEMP_SECONDS = 3600.0


@runtime_checkable
class Sink(Protocol):
    """Where a pipeline's cleaned batches are loaded."""

    def describe(self) -> str:
        """A displayable description (passwords masked)."""

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        """Write one batch idempotently (again = as if once); rows written."""

    def finish_run(self, run_id: str) -> None:
        """Called once every batch of the run is loaded."""

    def read_all(self) -> pd.DataFrame:
        """Everything the sink holds now."""


class ParquetSink:
    """A local directory of Parquet files, one per batch (path plain or `file://`)."""

    def __init__(self, path: str, *, write_disposition: str = "replace") -> None:
        if write_disposition not in DISPOSITIONS:
            raise ValueError(f"write_disposition must be one of {', '.join(DISPOSITIONS)}, "
                             f"not {write_disposition!r}")
        self.path = Path(path[len("file://"):] if path.startswith("file://") else path)
        self.write_disposition = write_disposition

    def __repr__(self) -> str:
        return f"ParquetSink({str(self.path)!r}, write_disposition={self.write_disposition!r})"

    def describe(self) -> str:
        return f"parquet dataset {self.path} ({self.write_disposition})"

    def for_backfill(self) -> "ParquetSink":
        """The same dataset, appended to: a backfill or a replay adds rows to the dataset
        and must not replace what other runs loaded."""
        return ParquetSink(str(self.path), write_disposition="append")

    @staticmethod
    def file_name(run_id: str, shard: int, batch: int) -> str:
        """The batch's file name; ValueError for a run id that is not a plain name."""
        if not run_id or "/" in run_id or "\\" in run_id or run_id in (".", "..") or shard < 0 or batch < 0:
            raise ValueError(f"cannot name a part file for run {run_id!r}, shard {shard}, batch {batch}")
        return f"part-{run_id}-{shard:05d}-{batch:06d}.parquet"

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        from etl.core.parquet import to_parquet_bytes

        return self.write_parquet(to_parquet_bytes(frame), run_id=run_id, shard=shard, batch=batch)

    def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int) -> int:
        """Write a batch that is already Parquet bytes (the staged file: no re-encoding)."""
        rows = pq.read_metadata(pa.BufferReader(data)).num_rows
        atomic_write(self.path / self.file_name(run_id, shard, batch), data)
        return rows

    def finish_run(self, run_id: str) -> None:
        """"replace": delete the part files of every other run. Both: sweep temporary files
        that crashed writes left behind."""
        if not self.path.is_dir():
            return
        for temp in self.path.glob(f"{TEMP_PREFIX}*"):
            try:
                if time.time() - temp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    temp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        if self.write_disposition != "replace":
            return
        removed = 0
        for part in self.path.glob("part-*.parquet"):
            match = _PART.match(part.name)
            if match and match["run"] != run_id:
                part.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("%s: run %s replaced %d file(s) of earlier runs", self.path, run_id, removed)

    def read_all(self) -> pd.DataFrame:
        files = sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []
        frames = [pq.read_table(f).to_pandas() for f in files]
        frames = [f for f in frames if len(f.columns)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)


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


class MongoSink:
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
