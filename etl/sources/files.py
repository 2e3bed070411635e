"""A file as a source: CSV, JSON lines or Parquet, read one shard batch at a time.

A file source (CSV, JSON lines or Parquet; plain, .gz or single-member .zip; on local disk or
the object store) is parsed once per process and cached, so the many small batch reads of a
run cost a slice each instead of a parse each. Within a shard, rows are read in file order and
the cursor is the file position (row ordinal) of the last row read: stable for as long as the
file is unchanged, which `fingerprint` (a content hash) lets a resumed run check.

Lines that cannot be parsed at all are not dropped: they become rows carrying only
SOURCE_COLUMNS (the reason with the line number, the line number, the line's whole raw text),
and cleaning sends them to quarantine. A CSV record is one physical line: a quote that is not
closed on its line costs that line, never the lines after it (see etl.sources.lines), and a line
whose bytes are not UTF-8 costs that line, not its batch. A file that cannot be read at all (a
broken archive, no header) is one SourceError.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import threading
import zipfile
import zlib
from pathlib import Path
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl.core.errors import ConfigError, ObjectNotFound, SourceError
from etl.core.urls import mask_url
from etl.sources.base import Batch, Recuttable, Source, WholeTable, Windowed
from etl.sources.lines import parse_csv, parse_jsonl
from etl.sources.windows import Window
from shards import ShardPlan, rows_by_shard

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet")


def _guess_format(name: str) -> str:
    lower = name.lower()
    for suffix in (".gz", ".zip"):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
    if lower.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    raise ConfigError(f"cannot tell the format of {name!r}; pass format= one of {', '.join(FORMATS)}")


def _decompress(name: str, data: bytes) -> bytes:
    """The file inside a .gz or single-member .zip (other names: `data` as it is). A broken
    archive is a SourceError naming the file, never a traceback."""
    lower = name.lower()
    shown = mask_url(name)
    if lower.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except EOFError:
            raise SourceError(f"cannot read source {shown}: the gzip file is truncated "
                              "(it ends before its end-of-stream marker)") from None
        except (OSError, zlib.error) as exc:
            raise SourceError(f"cannot read source {shown}: not a gzip file, or a corrupt one "
                              f"({exc})") from None
    if lower.endswith(".zip"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise SourceError(f"{shown}: a zip source must hold exactly one file, "
                                      f"found {len(members)}")
                return archive.read(members[0])
        except zipfile.BadZipFile as exc:
            problem = ("not a zip file" if "not a zip file" in str(exc).lower()
                       else f"a corrupt zip file ({exc})")
            raise SourceError(f"cannot read source {shown}: {problem}") from None
        except (OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
            # truncated members, encrypted members, unsupported compression methods
            raise SourceError(f"cannot read source {shown}: cannot unpack the zip file ({exc})") from None
    return data


class ParsedCache:
    """The last few sources parsed in this process, by content: a worker that meets a new run
    over the same file, or that parsed it ahead (`etl worker --preload`), does not parse it
    again. Arrow tables are immutable, so sharing them is safe."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._tables: OrderedDict[tuple[str, str, str], pa.Table] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str], parse: Callable[[], pa.Table]) -> pa.Table:
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        table = parse()
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)
        return table


_parsed = ParsedCache()


class ShardOrders:
    """Sources in shard order in this process, by (content fingerprint, fitted plan): made
    once (a thread asking meanwhile waits for it instead of making it again) and shared by
    every FileSource over the same content, as a worker loads a pipeline anew for each run
    (the worker that creates a run makes it then, before its first fetch)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._orders: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._making: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._orders:
                return self._orders[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._orders:
                    return self._orders[key]
            made = make()
            with self._lock:
                self._orders[key] = made
                self._making.pop(key, None)
                while len(self._orders) > self.size:
                    self._orders.popitem(last=False)
            return made


_ordered = ShardOrders()


class FileSource(Source, Windowed, WholeTable, Recuttable):
    """A CSV, JSON-lines or Parquet file, local or on the object store (s3://bucket/key)."""

    def __init__(self, path: str, *, format: str | None = None, delimiter: str = ",",
                 s3_endpoint_url: str | None = None, window: Window | None = None) -> None:
        self.path = str(path)
        self.format = format or _guess_format(self.path)
        if self.format not in FORMATS:
            raise ConfigError(f"unknown source format {self.format!r}; use one of {', '.join(FORMATS)}")
        self.delimiter = delimiter
        self._s3_endpoint_url = s3_endpoint_url
        self.window = window
        self._lock = threading.Lock()
        self._loaded: tuple[str, pa.Table] | None = None  # (fingerprint, rows)
        self._content_hash: str | None = None  # of the file's bytes, read once
        self._unparsed: bytes | None = None  # those bytes, until parsed

    def __repr__(self) -> str:
        return f"FileSource({mask_url(self.path)!r}, format={self.format!r})"

    def describe(self) -> str:
        text = f"{self.format} file {mask_url(self.path)}"
        return f"{text}, rows with {self.window.describe()}" if self.window else text

    def windowed(self, window: Window) -> "FileSource":
        """The same file, restricted to the rows inside `window` (a backfill)."""
        return FileSource(self.path, format=self.format, delimiter=self.delimiter,
                          s3_endpoint_url=self._s3_endpoint_url, window=window)

    # -- reading the whole file once ---------------------------------------------------
    def _read_bytes(self) -> bytes:
        if self.path.startswith("s3://"):
            from etl.stores.objects import open_objects

            bucket, _, key = self.path[len("s3://"):].partition("/")
            store = open_objects(f"s3://{bucket}", endpoint_url=self._s3_endpoint_url)
            try:
                return store.get_bytes(key)
            except ObjectNotFound:
                raise SourceError(f"source file not found: {mask_url(self.path)}") from None
        local = Path(self.path[len("file://"):] if self.path.startswith("file://") else self.path)
        try:
            return local.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"source file not found: {local}") from None
        except OSError as exc:
            raise SourceError(f"cannot read source file {local}: {exc}") from exc

    def _parse(self, data: bytes) -> pa.Table:
        raw = _decompress(self.path, data) if self.format != "parquet" else data
        try:
            if self.format == "csv":
                return parse_csv(raw, delimiter=self.delimiter)
            if self.format == "jsonl":
                return parse_jsonl(raw)
            return pq.read_table(io.BytesIO(raw))
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise SourceError(f"cannot parse {self.format} source {mask_url(self.path)}: {exc}") from exc

    def _content(self) -> tuple[str, bytes | None]:
        """The file's content hash, and its bytes while they are not parsed yet (the parse
        then reads the very bytes that were hashed). Call with the lock held."""
        if self._content_hash is None:
            data = self._read_bytes()
            self._content_hash, self._unparsed = hashlib.sha256(data).hexdigest(), data
        return self._content_hash, self._unparsed

    def table(self) -> pa.Table:
        """The whole source as an Arrow table (parsed once per process, then cached)."""
        with self._lock:
            if self._loaded is None:
                digest, data = self._content()
                raw = data if data is not None else self._read_bytes()
                table = _parsed.get((digest, self.format, self.delimiter), lambda: self._parse(raw))
                self._unparsed = None
                if self.window is not None:
                    table = self.window.apply(table)
                log.info("read %s: %d rows", self.describe(), table.num_rows)
                self._loaded = (self._windowed_digest(digest), table)
            return self._loaded[1]

    def _windowed_digest(self, digest: str) -> str:
        if self.window is None:
            return digest
        return hashlib.sha256(f"{digest}|{self.window.describe()}".encode()).hexdigest()

    def frame(self) -> pd.DataFrame:
        """The whole source as a DataFrame."""
        return self.table().to_pandas()

    def fingerprint(self) -> str:
        """The content hash of the file (with the window, if any): read, not parsed, so a
        resumed or completed run is recognised without parsing the file."""
        with self._lock:
            if self._loaded is not None:
                return self._loaded[0]
            return self._windowed_digest(self._content()[0])

    def row_count(self) -> int | None:
        return self.table().num_rows

    def sample(self, columns: list[str]) -> pd.DataFrame:
        table = self.table()
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SourceError(f"shard column(s) {', '.join(missing)} not in {self.describe()}; "
                              f"columns are: {', '.join(table.column_names)}")
        return table.select(columns).to_pandas()

    # -- batches -----------------------------------------------------------------------
    def _shard_rows(self, plan: ShardPlan) -> tuple[np.ndarray, np.ndarray, pa.Table]:
        """Row ordinals grouped by shard, where each shard's group starts, and the table in
        that order (taken once: a batch is then a zero-copy slice of it, where a take per
        batch from the parsed table's many chunks cost ~8 ms whatever the batch's size)."""
        key = (self.fingerprint(), json.dumps(plan.to_dict(), sort_keys=True, default=str))
        return _ordered.get(key, lambda: self._order_by_shard(plan))

    def _order_by_shard(self, plan: ShardPlan) -> tuple[np.ndarray, np.ndarray, pa.Table]:
        keys = self.sample(list(getattr(plan, "columns", None) or []) or
                           self.table().column_names)
        order, starts = rows_by_shard(plan.assign(keys), plan.shards)
        return order, starts, self.table().take(pa.array(order, type=pa.int64()))

    def prepare(self, plan: ShardPlan) -> None:
        self._shard_rows(plan)

    def read_batch(self, plan: ShardPlan, shard: int, *, after: Any, limit: int) -> Batch:
        if not 0 <= shard < plan.shards:
            raise SourceError(f"shard {shard} out of range 0..{plan.shards - 1}")
        order, starts, ordered = self._shard_rows(plan)
        rows = order[starts[shard]:starts[shard + 1]]
        begin = 0 if after is None else int(np.searchsorted(rows, int(after), side="right"))
        picked = rows[begin:begin + limit]
        table = ordered.slice(int(starts[shard]) + begin, len(picked))
        end = int(picked[-1]) if len(picked) else after
        return Batch(table=table, cursor_start=after, cursor_end=end,
                     exhausted=begin + len(picked) >= len(rows),
                     shard_progress=(begin + len(picked)) / len(rows) if len(rows) else 1.0)

    def recut(self, plan: ShardPlan, shard: int, *, after: Any, rows: int) -> Batch:
        """The batch a fetch cut at `after`: the file's rows are in a fixed order per shard,
        so the same cursor and row count give the same rows while the file is unchanged."""
        return self.read_batch(plan, shard, after=after, limit=rows)
