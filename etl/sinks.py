"""Sinks: where cleaned batches end. Every write is idempotent, so a batch written twice
(after a crash between the write and its ledger entry) is held once.

* ParquetSink: one deterministic file per batch, `part-<run>-<shard>-<batch>.parquet`,
  written atomically. With write_disposition "replace" (default), finishing a run removes
  the files of other runs, so a finished dataset holds exactly one run's rows.
* MongoSink: bulk upsert by the pipeline's key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl.files import atomic_write
from etl.urls import mask_url

log = logging.getLogger(__name__)

DISPOSITIONS = ("replace", "append")


class Sink(Protocol):
    def describe(self) -> str: ...

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        """Write one batch idempotently; rows written."""

    def finish_run(self, run_id: str) -> None:
        """Called once every batch of the run is loaded."""

    def read_all(self) -> pd.DataFrame:
        """Everything the sink holds now."""


class ParquetSink:
    """A directory of Parquet files, one per batch."""

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

    @staticmethod
    def file_name(run_id: str, shard: int, batch: int) -> str:
        return f"part-{run_id}-{shard:05d}-{batch:06d}.parquet"

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        from etl.parquet import to_parquet_bytes

        self.write_parquet(to_parquet_bytes(frame), run_id=run_id, shard=shard, batch=batch)
        return len(frame)

    def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int) -> int:
        """Write a batch that is already Parquet bytes (the staged file: no re-encoding)."""
        rows = pq.read_metadata(pa.BufferReader(data)).num_rows
        atomic_write(self.path / self.file_name(run_id, shard, batch), data)
        return rows

    def finish_run(self, run_id: str) -> None:
        if self.write_disposition != "replace" or not self.path.is_dir():
            return
        own = f"part-{run_id}-"
        for stale in self.path.glob("part-*.parquet"):
            if not stale.name.startswith(own):
                stale.unlink(missing_ok=True)
                log.info("replaced %s (from an earlier run)", stale.name)

    def read_all(self) -> pd.DataFrame:
        files = sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _safe_field(name: str) -> str:
    """MongoDB field names may not start with "$" nor contain "."."""
    return str(name).replace(".", "_").replace("$", "_")


def _plain(value: Any) -> Any:
    """A value pymongo can encode: None for missing, Python scalars, datetimes."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


class MongoSink:
    """A MongoDB collection, written by bulk upsert on `key`."""

    def __init__(self, url: str, *, collection: str, key: Sequence[str],
                 database: str | None = None, client: Any = None, chunk: int = 1000) -> None:
        self.url, self.collection_name, self.key = mask_url(url), collection, [_safe_field(k) for k in key]
        self._raw_url, self._database, self._client, self.chunk = url, database, client, chunk
        self._collection: Any = None

    def describe(self) -> str:
        return f"mongodb collection {self.collection_name} at {self.url} (upsert on {', '.join(self.key)})"

    def _coll(self) -> Any:
        if self._collection is None:
            client = self._client
            if client is None:
                if self._raw_url.startswith("mongomock://"):
                    import mongomock

                    client = mongomock.MongoClient()
                else:
                    import pymongo

                    client = pymongo.MongoClient(self._raw_url)
                self._client = client
            name = self._database or (self._raw_url.split("://", 1)[1].split("/", 1) + ["etl"])[1].split("?")[0] or "etl"
            coll = client[name][self.collection_name]
            coll.create_index([(k, 1) for k in self.key], unique=True, name="etl_key")
            self._collection = coll
        return self._collection

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        from pymongo import ReplaceOne

        columns = [_safe_field(c) for c in frame.columns]
        coll = self._coll()
        rows = frame.to_dict(orient="split")["data"]
        for start in range(0, len(rows), self.chunk):
            ops = []
            for row in rows[start:start + self.chunk]:
                doc = {c: _plain(v) for c, v in zip(columns, row)}
                ops.append(ReplaceOne({k: doc.get(k) for k in self.key}, doc, upsert=True))
            if ops:
                coll.bulk_write(ops, ordered=False)
        return len(frame)

    def finish_run(self, run_id: str) -> None:
        return None

    def read_all(self) -> pd.DataFrame:
        return pd.DataFrame(list(self._coll().find({}, {"_id": 0})))
