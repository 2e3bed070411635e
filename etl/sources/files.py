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
broken archive, no header) is one SourceError. A JSON field whose values are of different
kinds in different lines is kept as text, for the stages to decide (`mixed_types`).

How a CSV is read follows pandas' and pyarrow's habits (`null_values`, `delimiter`,
`quotechar`, `encoding`, `header`/`column_names`, `skip_rows`, `column_types`), checked when
the source is made (a ConfigError naming the option). Options that change the parsed table
are part of the fingerprint, so a resumed run notices a change; a replay reads the kept raw
text of rejected lines again with the options of the fixed source (`reparse`).
"""

from __future__ import annotations

import atexit
import codecs
import hashlib
import json
import logging
import threading
from pathlib import Path
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import fields
from typing import Any, Callable, Collection, Mapping, Sequence

from etl.core.errors import ConfigError, ObjectNotFound, SourceError
from etl.core.lazy import LazyModule
from etl.core.urls import mask_url
from etl.sources.archives import decompress
from etl.sources.base import (SOURCE_COLUMNS, Batch, ParsesAhead, Recuttable, Reparsable,
                              ShardGrouped, Source, WholeTable, Windowed)
from etl.sources.digests import Reading, begin_reading, digests
from etl.sources.lines import (DEFAULT_NULL_VALUES, MIXED_TYPES, CsvOptions, JsonOptions,
                               import_readers, parse_csv, parse_jsonl, reparse_lines)
from etl.sources.windows import Window
from shards import ShardPlan, assign_rows, rows_by_shard, shard_of_rows

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")
pq = LazyModule("pyarrow.parquet")

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet")

#: The name of the threads that parse a file ahead (`FileSource.parse_ahead`).
PARSE_THREAD = "etl-parse-ahead"


def _join_parses() -> None:
    """At exit, wait for every parse begun ahead to end, thread and all. A daemon thread
    that the interpreter's shutdown finds inside pyarrow is stopped as it takes the GIL back,
    and unwinding its C++ frames aborts the process ("terminate called without an active
    exception"). One handler for every parse: a thread that took its own join out of
    `atexit` as it ended did so while the main thread could be running that very handler
    (the test of a parse outliving its process aborted in 2 of 32 runs that way)."""
    for thread in threading.enumerate():
        if thread.name == PARSE_THREAD and thread is not threading.current_thread():
            thread.join()


atexit.register(_join_parses)


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


class ShardRows:
    """A parsed source's rows grouped by shard: each shard's row ordinals in file order
    (`order`, `starts`), and the rows themselves gathered in that order on demand. A batch
    is then a zero-copy slice of its shard's rows. Worker processes forked after the
    grouping each gather only the shards they own (`gather`), in parallel.

    Rows are gathered one parsed block at a time: each block's rows of the wanted shards
    are put in shard order by one `take` within the block, which stays in the processor's
    cache, and a shard's rows are its pieces of every block, in block order (file order).
    One `take` of a shard's rows across the whole table instead reads the table's columns
    in scattered order, once per shard, after concatenating its chunks: 10x demo, half of
    the shards, 1.3 -> 0.7 s of CPU."""

    def __init__(self, table: pa.Table, order: np.ndarray, starts: np.ndarray) -> None:
        self.table, self.order, self.starts = table, order, starts
        self._gathered: dict[int, pa.Table] = {}
        self._shard_of: np.ndarray | None = None  # each row's shard (`_by_blocks`)
        self._lock = threading.Lock()

    @property
    def shards(self) -> int:
        return len(self.starts) - 1

    def rows(self, shard: int) -> np.ndarray:
        """The shard's row ordinals, in file order."""
        return self.order[self.starts[shard]:self.starts[shard + 1]]

    def gather(self, shards: Any) -> None:
        """Gather the rows of `shards` (those not gathered yet)."""
        with self._lock:
            wanted = sorted({int(s) for s in shards} - set(self._gathered))
            if wanted:
                self._gathered.update(self._by_blocks(wanted))

    def _by_blocks(self, wanted: list[int]) -> dict[int, pa.Table]:
        """Each wanted shard's rows, in file order, gathered block by block. Call with the
        lock held."""
        if self._shard_of is None:  # made once: a shard taken over is gathered on its own
            self._shard_of = shard_of_rows(self.order, self.starts)
        shard_of = self._shard_of
        pieces: dict[int, list[pa.RecordBatch]] = {s: [] for s in wanted}
        wanted_array = np.asarray(wanted, dtype=np.int64)  # s + 1 may not fit 16 bits
        low = 0
        for block in self.table.to_batches():
            high = low + block.num_rows
            codes = shard_of[low:high]
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.concatenate([wanted_array, wanted_array + 1]))
            begins, ends = bounds[:len(wanted)], bounds[len(wanted):]
            if (ends > begins).any():
                taken = block.take(pa.array(np.concatenate(
                    [order[b:e] for b, e in zip(begins, ends)]), type=pa.int64()))
                at = 0
                for shard, begin, end in zip(wanted, begins, ends):
                    if end > begin:
                        pieces[shard].append(taken.slice(at, int(end - begin)))
                        at += int(end - begin)
            low = high
        return {s: pa.Table.from_batches(pieces[s], schema=self.table.schema) for s in wanted}

    def shard_table(self, shard: int) -> pa.Table:
        """Every row of `shard`, in file order; batches are slices of it. A shard not
        gathered yet is gathered with every other one left (a worker reading any shard of
        the plan)."""
        if shard not in self._gathered:
            self.gather(range(self.shards))
        return self._gathered[shard]


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


def _bad(option: str, problem: str) -> ConfigError:
    return ConfigError(f"FileSource: {option} {problem}")


def _one_character(option: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
        raise _bad(option, f"must be one character other than a line break, not {value!r}")
    return value


def _strings(option: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or \
            not all(isinstance(v, str) for v in value):
        raise _bad(option, f"must be a list of strings, not {value!r}")
    return tuple(value)


def _type_name(column: str, kind: Any) -> str:
    name = str(kind) if isinstance(kind, pa.DataType) else kind
    try:
        if not isinstance(name, str) or pa.type_for_alias(name) is None:
            raise ValueError(name)
    except (ValueError, KeyError, TypeError):
        raise _bad(f"column_types[{column!r}]", f"is {kind!r}, not a pyarrow type name "
                   "(int64, float64, string, bool, date32, timestamp[s], ...)") from None
    return name


def csv_options(*, delimiter: Any, quotechar: Any, encoding: Any, header: Any, column_names: Any,
                skip_rows: Any, null_values: Any, column_types: Any) -> CsvOptions:
    """FileSource's CSV options, checked: a ConfigError naming the option otherwise."""
    delimiter = _one_character("delimiter", delimiter)
    if quotechar is not None:
        quotechar = _one_character("quotechar", quotechar)
        if quotechar == delimiter:
            raise _bad("quotechar", f"must differ from the delimiter ({delimiter!r})")
    if not isinstance(header, bool):
        raise _bad("header", f"must be True (the first line names the columns) or False, "
                   f"not {header!r}")
    if column_names is not None:
        column_names = _strings("column_names", column_names)
        if not column_names or len(set(column_names)) != len(column_names):
            raise _bad("column_names", f"must be distinct names, at least one: {column_names!r}")
        if quotechar is None and any(delimiter in name for name in column_names):
            raise _bad("column_names", f"hold the delimiter {delimiter!r}, and quotechar is None")
    if isinstance(skip_rows, bool) or not isinstance(skip_rows, int) or skip_rows < 0:
        raise _bad("skip_rows", f"must be a whole number of lines, 0 or more, not {skip_rows!r}")
    nulls = DEFAULT_NULL_VALUES if null_values is None else _strings("null_values", null_values)
    types: tuple[tuple[str, str], ...] = ()
    if column_types is not None:
        if not isinstance(column_types, Mapping):
            raise _bad("column_types", f"must map column names to type names, not {column_types!r}")
        types = tuple((str(column), _type_name(str(column), kind))
                      for column, kind in column_types.items())
    return CsvOptions(delimiter=delimiter, quotechar=quotechar, encoding=encoding, header=header,
                      column_names=column_names, skip_rows=skip_rows, null_values=nulls,
                      column_types=types)


def _differences(options: Any) -> dict[str, Any]:
    """The options that differ from their defaults, by name."""
    default = type(options)()
    return {f.name: getattr(options, f.name) for f in fields(options)
            if getattr(options, f.name) != getattr(default, f.name)}


class FileSource(Source, Windowed, WholeTable, Recuttable, Reparsable, ShardGrouped, ParsesAhead):
    """A CSV, JSON-lines or Parquet file, local or on the object store (s3://bucket/key).

    Options, keyword-only, as pandas.read_csv and pyarrow.csv name them:

    - `null_values` (CSV): the texts read as null in every column, numbers and text alike;
      default pandas' list ("", "NA", "N/A", "NULL", "NaN", "null", "nan", ...). `[]` keeps
      every text as it is.
    - `delimiter` (CSV, default ","), `quotechar` (CSV, default '"'; None: no quoting).
    - `encoding` (CSV and JSON lines, default "utf-8"): any codec Python knows ("latin-1",
      "cp1252", "utf-16", ...); a line that is not text in it is an error row.
    - `header` (CSV, default True: the first line names the columns) and `column_names`:
      with header=True they replace the file's names, with header=False the first line is
      data (no names given: f0, f1, ... as pyarrow names them).
    - `skip_rows` (CSV): lines skipped before the header (a title, a comment block).
    - `column_types` (CSV): {column: type name} ("int64", "float64", "string", "bool",
      "date32", "timestamp[s]", or a pyarrow DataType); a line whose value does not convert
      is an error row naming the column, value and type, never a failed source.
    - `mixed_types` (JSON lines): a field whose values are of different kinds in different
      lines (a number in most, a string in some) arrives as "text" (default: strings as
      they are, other values as their JSON), as "json" (every value as JSON text, so "12"
      and 12 stay apart), or "quarantine" (the lines of the rarer kinds are error rows).
    """

    def __init__(self, path: str, *, format: str | None = None, delimiter: str = ",",
                 quotechar: str | None = '"', encoding: str = "utf-8", header: bool = True,
                 column_names: Sequence[str] | None = None, skip_rows: int = 0,
                 null_values: Sequence[str] | None = None,
                 column_types: Mapping[str, Any] | None = None, mixed_types: str = "text",
                 s3_endpoint_url: str | None = None, window: Window | None = None) -> None:
        self.path = str(path)
        self.format = format or _guess_format(self.path)
        if self.format not in FORMATS:
            raise ConfigError(f"unknown source format {self.format!r}; use one of {', '.join(FORMATS)}")
        if not isinstance(encoding, str):
            raise _bad("encoding", f"must be a codec name such as 'utf-8' or 'latin-1', not {encoding!r}")
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise _bad("encoding", f"{encoding!r} is not a codec Python knows "
                       "('utf-8', 'latin-1', 'cp1252', 'utf-16', ...)") from None
        if mixed_types not in MIXED_TYPES:
            raise _bad("mixed_types", f"must be one of {', '.join(map(repr, MIXED_TYPES))}, "
                       f"not {mixed_types!r}")
        csv = csv_options(delimiter=delimiter, quotechar=quotechar, encoding=encoding,
                          header=header, column_names=column_names, skip_rows=skip_rows,
                          null_values=null_values, column_types=column_types)
        self.delimiter = delimiter
        self.options: CsvOptions | JsonOptions | None
        if self.format == "csv":
            self.options = csv
        else:
            given = [name for name in _differences(csv) if name != "encoding"]
            if given:
                raise _bad(given[0], f"applies to CSV files only, and {mask_url(self.path)} is "
                           f"read as {self.format}")
            if self.format == "jsonl":
                self.options = JsonOptions(encoding=encoding, mixed_types=mixed_types)
            elif encoding != "utf-8" or mixed_types != "text":
                raise _bad("encoding" if encoding != "utf-8" else "mixed_types",
                           f"does not apply to a parquet file ({mask_url(self.path)})")
            else:
                self.options = None
        if self.format != "jsonl" and mixed_types != "text":
            raise _bad("mixed_types", f"applies to JSON lines only, and {mask_url(self.path)} "
                       f"is read as {self.format}")
        self._s3_endpoint_url = s3_endpoint_url
        self.window = window
        self._lock = threading.Lock()
        self._loaded: tuple[str, pa.Table] | None = None  # (fingerprint, rows)
        self._content_hash: str | None = None  # of the file's bytes, read once
        self._hash_reused = False  # the hash is this process's, of the file as it still is
        self._reading: Reading | None = None  # the local file before its bytes were read
        self._unparsed: bytes | None = None  # those bytes, until parsed
        self._ahead: Future[pa.Table] | None = None  # the parse begun by parse_ahead

    def __repr__(self) -> str:
        return f"FileSource({mask_url(self.path)!r}, format={self.format!r})"

    def _options_text(self) -> str:
        """The options that differ from the defaults ('' for none): they change the table."""
        if self.options is None:
            return ""
        changed = _differences(self.options)
        if "column_types" in changed:
            changed["column_types"] = dict(changed["column_types"])
        if "null_values" in changed:
            changed["null_values"] = list(changed["null_values"])
        if "column_names" in changed:
            changed["column_names"] = list(changed["column_names"])
        return ", ".join(f"{name} {value!r}" for name, value in changed.items())

    def describe(self) -> str:
        text = f"{self.format} file {mask_url(self.path)}"
        if options := self._options_text():
            text = f"{text} ({options})"
        return f"{text}, rows with {self.window.describe()}" if self.window else text

    def windowed(self, window: Window) -> "FileSource":
        """The same file, restricted to the rows inside `window` (a backfill)."""
        source = FileSource(self.path, format=self.format, s3_endpoint_url=self._s3_endpoint_url,
                            window=window)
        source.delimiter, source.options = self.delimiter, self.options
        return source

    # -- reading the whole file once ---------------------------------------------------
    def _read_bytes(self) -> bytes:
        path = self._local_path()
        if path is None:
            from etl.stores.objects import open_objects

            bucket, _, key = self.path[len("s3://"):].partition("/")
            store = open_objects(f"s3://{bucket}", endpoint_url=self._s3_endpoint_url)
            try:
                return store.get_bytes(key)
            except ObjectNotFound:
                raise SourceError(f"source file not found: {mask_url(self.path)}") from None
        local = Path(path)
        self._reading = begin_reading(path)
        try:
            return local.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"source file not found: {local}") from None
        except OSError as exc:
            raise SourceError(f"cannot read source file {local}: {exc}") from exc

    def _local_path(self) -> str | None:
        """The file's path on this machine; None for an S3 object."""
        if self.path.startswith("s3://"):
            return None
        return self.path[len("file://"):] if self.path.startswith("file://") else self.path

    def _parse(self, data: bytes) -> pa.Table:
        raw = decompress(self.path, data) if self.format != "parquet" else data
        try:
            if isinstance(self.options, CsvOptions):
                table = parse_csv(raw, options=self.options)
            elif isinstance(self.options, JsonOptions):
                table = parse_jsonl(raw, options=self.options)
            else:
                table = pq.read_table(pa.BufferReader(raw))
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise SourceError(f"cannot parse {self.format} source {mask_url(self.path)}: {exc}") from exc
        if isinstance(self.options, CsvOptions) and self.options.column_types:
            missing = [c for c, _ in self.options.column_types if c not in table.column_names]
            if missing:
                raise SourceError(f"column_types names column(s) {', '.join(map(repr, missing))} "
                                  f"not in {self.describe()}; columns are: "
                                  f"{', '.join(c for c in table.column_names if c not in SOURCE_COLUMNS)}")
        return table

    def _content(self) -> tuple[str, bytes | None]:
        """The file's content hash, and its bytes while they are not parsed yet (the parse
        then reads the very bytes that were hashed). A local file this process hashed
        before and that has not changed since keeps its hash unread (etl.sources.digests);
        its bytes are read only if it must be parsed again. Call with the lock held."""
        if self._content_hash is None:
            local = self._local_path()
            known = digests.get(local) if local is not None and self._unparsed is None else None
            if known is not None:
                self._content_hash, self._hash_reused = known, True
                return known, None
            data = self._unparsed if self._unparsed is not None else self._read_bytes()
            self._content_hash, self._unparsed = hashlib.sha256(data).hexdigest(), data
            if local is not None:
                digests.remember(local, self._reading, self._content_hash)
        return self._content_hash, self._unparsed

    def _read_as_hashed(self, digest: str) -> bytes:
        """The file's bytes for a parse, checked against a hash kept from an earlier read:
        a file changed since then in a way its signature did not show is refused, never
        parsed under the old hash."""
        data = self._read_bytes()
        if self._hash_reused and hashlib.sha256(data).hexdigest() != digest:
            digests.forget(self._local_path() or "")
            raise SourceError(f"{self.describe()} changed while it was read; run again")
        return data

    def parse_ahead(self) -> None:
        """Begin parsing the file's bytes in a background thread (read here, once: the
        fingerprint hashes the same bytes meanwhile). 10x demo: read, hash and parse
        1.51-1.57 s one after the other, 1.36-1.40 s together, on 2 cores. The parse's
        error, if any, is raised where the rows are asked for. A process ending before the
        parse does (a run found complete: nothing to parse for) waits for it at exit, as
        a thread inside pyarrow must not be stopped by the interpreter's shutdown."""
        with self._lock:
            if self._loaded is not None or self._ahead is not None or self._hash_reused:
                return  # (a kept hash: table() reads and checks the bytes if it must parse)
            if self._unparsed is None:
                self._unparsed = self._read_bytes()
            import_readers()  # here, not in the parse's thread (etl.sources.lines)
            data, ahead = self._unparsed, Future()
            self._ahead = ahead

        def parse() -> None:
            try:
                ahead.set_result(self._parse(data))
            except BaseException as exc:  # noqa: BLE001 - raised where the rows are asked for
                ahead.set_exception(exc)

        threading.Thread(target=parse, name=PARSE_THREAD, daemon=True).start()

    def table(self) -> pa.Table:
        """The whole source as an Arrow table (parsed once per process, then cached)."""
        with self._lock:
            if self._loaded is None:
                digest, data = self._content()
                ahead, self._ahead = self._ahead, None
                if ahead is not None:  # begun by parse_ahead, on the bytes just hashed
                    parse: Callable[[], pa.Table] = ahead.result
                elif data is not None:
                    parse = lambda: self._parse(data)  # noqa: E731
                else:  # hashed earlier (etl.sources.digests): read only on a cache miss
                    parse = lambda: self._parse(self._read_as_hashed(digest))  # noqa: E731
                table = _parsed.get((digest, self.format, repr(self.options)), parse)
                self._unparsed = None
                if self.window is not None:
                    table = self.window.apply(table)
                log.info("read %s: %d rows", self.describe(), table.num_rows)
                self._loaded = (self._windowed_digest(digest), table)
            return self._loaded[1]

    def _windowed_digest(self, digest: str) -> str:
        """The content hash, with the options that change the parsed table (none: the
        content hash itself) and the window, if any."""
        if options := self._options_text():
            digest = hashlib.sha256(f"{digest}|{options}".encode()).hexdigest()
        if self.window is None:
            return digest
        return hashlib.sha256(f"{digest}|{self.window.describe()}".encode()).hexdigest()

    def frame(self) -> pd.DataFrame:
        """The whole source as a DataFrame."""
        return self.table().to_pandas()

    def fingerprint(self) -> str:
        """The content hash of the file (with the options that change its table and the
        window, if any): read, not parsed, so a resumed or completed run is recognised
        without parsing the file, and a changed option is noticed."""
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
    def _shard_rows(self, plan: ShardPlan) -> ShardRows:
        """The rows grouped by the shards of `plan` (made once per process and plan)."""
        key = (self.fingerprint(), json.dumps(plan.to_dict(), sort_keys=True, default=str))
        return _ordered.get(key, lambda: self._order_by_shard(plan))

    def _order_by_shard(self, plan: ShardPlan) -> ShardRows:
        keys = self.sample(list(getattr(plan, "columns", None) or []) or
                           self.table().column_names)
        order, starts = rows_by_shard(assign_rows(plan, keys), plan.shards)
        return ShardRows(self.table(), order, starts)

    def prepare(self, plan: ShardPlan) -> None:
        """Parse, and group the rows by shard (not gathered yet: see `prepare_shards`)."""
        self._shard_rows(plan)

    def prepare_shards(self, plan: ShardPlan, shards: Collection[int]) -> None:
        """Gather the rows of `shards`, the shards this process will read."""
        self._shard_rows(plan).gather(shards)

    def shard_sizes(self, plan: ShardPlan) -> list[int]:
        """Rows per shard (the grouping is made once per process and plan)."""
        return np.diff(self._shard_rows(plan).starts).astype(int).tolist()

    def read_batch(self, plan: ShardPlan, shard: int, *, after: Any, limit: int) -> Batch:
        if not 0 <= shard < plan.shards:
            raise SourceError(f"shard {shard} out of range 0..{plan.shards - 1}")
        grouped = self._shard_rows(plan)
        rows = grouped.rows(shard)
        begin = 0 if after is None else int(np.searchsorted(rows, int(after), side="right"))
        picked = rows[begin:begin + limit]
        whole = grouped.shard_table(shard)
        end = int(picked[-1]) if len(picked) else after
        return Batch(table=whole.slice(begin, len(picked)), cursor_start=after, cursor_end=end,
                     exhausted=begin + len(picked) >= len(rows),
                     shard_progress=(begin + len(picked)) / len(rows) if len(rows) else 1.0,
                     whole=whole, begin=begin)

    def recut(self, plan: ShardPlan, shard: int, *, after: Any, rows: int) -> Batch:
        """The batch a fetch cut at `after`: the file's rows are in a fixed order per shard,
        so the same cursor and row count give the same rows while the file is unchanged."""
        return self.read_batch(plan, shard, after=after, limit=rows)

    def reparse(self, texts: list[str], numbers: list[int | None] | None = None) -> pa.Table:
        """Lines this source could not parse (their kept raw text), read again with its
        options as they are now: one row per line, an error row (naming the line's number
        in the file, from `numbers`) for a line still unread. CSV lines are read under the
        file's columns (its header read with these options)."""
        if isinstance(self.options, CsvOptions):
            names = [c for c in self.table().column_names if c not in SOURCE_COLUMNS]
            return reparse_lines(texts, csv=self.options, column_names=names, numbers=numbers)
        if isinstance(self.options, JsonOptions):
            return reparse_lines(texts, json_options=self.options, numbers=numbers)
        raise SourceError(f"{self.describe()} has no lines to read again")
