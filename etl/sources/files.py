"""A file as a source: CSV, JSON lines or Parquet, read one shard batch at a time.

A file source (CSV, JSON lines or Parquet; plain, .gz or single-member .zip; on local disk or
the object store) is parsed once per process and cached, so the many small batch reads of a
run cost a slice each instead of a parse each. Within a shard, rows are read in file order and
the cursor is the file position (row ordinal) of the last row read: stable for as long as the
file is unchanged, which `fingerprint` (a content hash) lets a resumed run check.

Lines that cannot be parsed at all are not dropped: they become rows carrying only
SOURCE_COLUMNS (the reason with the line number, the line number, the line's whole raw text),
and cleaning sends them to quarantine. A CSV record is one physical line: a quote that is not
closed on its line costs that line, never the lines after it (see `_parse_csv`), and a line
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
from itertools import chain
from pathlib import Path
from collections import Counter, OrderedDict
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from etl.core.errors import ConfigError, ObjectNotFound, SourceError
from etl.core.urls import mask_url
from etl.sources.base import (SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN, Batch,
                              Source, WholeTable, Windowed)
from etl.sources.windows import Window
from shards import ShardPlan

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


class FileSource(Source, Windowed, WholeTable):
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
        self._orders: dict[str, tuple[np.ndarray, np.ndarray]] = {}

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
                return _parse_csv(raw, delimiter=self.delimiter)
            if self.format == "jsonl":
                return _parse_jsonl(raw)
            return pq.read_table(io.BytesIO(raw))
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise SourceError(f"cannot parse {self.format} source {mask_url(self.path)}: {exc}") from exc

    def table(self) -> pa.Table:
        """The whole source as an Arrow table (parsed once per process, then cached)."""
        with self._lock:
            if self._loaded is None:
                data = self._read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                table = _parsed.get((digest, self.format, self.delimiter), lambda: self._parse(data))
                if self.window is not None:
                    table = self.window.apply(table)
                    digest = hashlib.sha256(f"{digest}|{self.window.describe()}".encode()).hexdigest()
                log.info("read %s: %d rows", self.describe(), table.num_rows)
                self._loaded = (digest, table)
            return self._loaded[1]

    def frame(self) -> pd.DataFrame:
        """The whole source as a DataFrame."""
        return self.table().to_pandas()

    def fingerprint(self) -> str:
        self.table()
        assert self._loaded is not None
        return self._loaded[0]

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
    def _shard_rows(self, plan: ShardPlan) -> tuple[np.ndarray, np.ndarray]:
        """Row ordinals grouped by shard, and where each shard's group starts."""
        key = json.dumps(plan.to_dict(), sort_keys=True, default=str)
        with self._lock:
            cached = self._orders.get(key)
        if cached is not None:
            return cached
        keys = self.sample(list(getattr(plan, "columns", None) or []) or
                           self.table().column_names)
        assigned = np.asarray(plan.assign(keys), dtype=np.int64)
        order = np.argsort(assigned, kind="stable")  # file order within each shard
        starts = np.searchsorted(assigned[order], np.arange(plan.shards + 1), side="left")
        with self._lock:
            self._orders[key] = (order, starts)
        return order, starts

    def prepare(self, plan: ShardPlan) -> None:
        self._shard_rows(plan)

    def read_batch(self, plan: ShardPlan, shard: int, *, after: Any, limit: int) -> Batch:
        if not 0 <= shard < plan.shards:
            raise SourceError(f"shard {shard} out of range 0..{plan.shards - 1}")
        order, starts = self._shard_rows(plan)
        rows = order[starts[shard]:starts[shard + 1]]
        begin = 0 if after is None else int(np.searchsorted(rows, int(after), side="right"))
        picked = rows[begin:begin + limit]
        table = self.table().take(pa.array(picked, type=pa.int64()))
        end = int(picked[-1]) if len(picked) else after
        return Batch(table=table, cursor_start=after, cursor_end=end,
                     exhausted=begin + len(picked) >= len(rows),
                     shard_progress=(begin + len(picked)) / len(rows) if len(rows) else 1.0)


#: How much of a bad line its reason shows; the whole line is in SOURCE_TEXT_COLUMN.
PREVIEW = 200
#: The line-number column `_parse_csv_by_line` puts in front of every line.
_LINE = "_etl_line_number_"
#: Re-parses of the lines a quote spilled over before giving up (nested spills are rare).
_MAX_PASSES = 20
_BOM = b"\xef\xbb\xbf"

#: Unparseable lines: (line number, problem); the problem ends with the line's preview.
BadLines = list[tuple[int, str]]


def _preview(text: str) -> str:
    if len(text) <= PREVIEW:
        return text
    return f"{text[:PREVIEW]}... ({len(text):,} characters, whole in {SOURCE_TEXT_COLUMN})"


def _not_utf8(exc: UnicodeDecodeError) -> str:
    byte = exc.object[exc.start]
    return f"not UTF-8 text (byte {byte:#04x} at position {exc.start + 1} of the line)"


def _line_spans(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Where each physical line starts and stops (terminator excluded). Lines end at \n,
    \r\n or a lone \r, as for pyarrow's CSV reader; no empty last line after the final
    terminator."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if b"\r" in raw:
        cr = data == 13
        lf = data == 10
        lone_cr = cr.copy()
        lone_cr[:-1] &= ~lf[1:]
        ends = np.flatnonzero(lf | lone_cr)
        crlf = lf[ends] & cr[np.maximum(ends - 1, 0)] & (ends > 0)
    else:
        ends = np.flatnonzero(data == 10)
        crlf = np.zeros(len(ends), dtype=bool)
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends - crlf, [len(data)]))
    if starts[-1] == len(data):  # the file ends with a terminator
        starts, stops = starts[:-1], stops[:-1]
    return starts, stops


def _broken_rows(table: pa.Table, skip: str | None = None) -> pa.Array | None:
    """Rows whose text holds a line break (a quoted field that ran past its line), as a
    boolean mask; None when there are none. Binary columns (not UTF-8) count as such rows."""
    found = None
    for name, column in zip(table.column_names, table.columns):
        if name == skip:
            continue
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            return pa.array(np.ones(table.num_rows, dtype=bool))
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            broken = pc.fill_null(pc.match_substring_regex(column, r"[\r\n]"), False)
            found = broken if found is None else pc.or_(found, broken)
    if found is None or not pc.any(found).as_py():
        return None
    return found


def _parse_csv(raw: bytes, *, delimiter: str) -> pa.Table:
    """The CSV as a table with one row per data line: a record is one physical line.

    pyarrow parses the whole file at once; that is the answer when it made exactly one row of
    every non-empty line after the header. Otherwise some line is broken (too many or too few
    fields, bytes that are not UTF-8, or a quote not closed on its line, which would carry the
    parser across the lines after it), and `_parse_csv_by_line` finds which lines, parses all
    the others, and keeps the broken ones whole."""
    rejected = 0

    def note(row: pacsv.InvalidRow) -> str:
        nonlocal rejected
        rejected += 1
        return "skip"

    try:
        table = pacsv.read_csv(io.BytesIO(raw), parse_options=pacsv.ParseOptions(
            delimiter=delimiter, invalid_row_handler=note))
    except pa.ArrowInvalid as exc:  # e.g. a later block that does not fit the inferred types
        log.info("csv parse failed (%s); parsing line by line", exc)
    else:
        starts, stops = _line_spans(raw)
        data_lines = max(int(np.count_nonzero(stops > starts)) - 1, 0)
        try:
            if not rejected and table.num_rows == data_lines and _broken_rows(table) is None:
                return table
        except UnicodeDecodeError:  # a column name that is not UTF-8: the header is broken
            pass
    return _parse_csv_by_line(raw, delimiter=delimiter)


def _parse_csv_by_line(raw: bytes, *, delimiter: str) -> pa.Table:
    """Parse a CSV with broken lines: every line is prefixed with its number, so each row
    (and each row pyarrow rejects) says which line it started on. A line whose row swallowed
    the lines after it, or holds a line break, opened a quote it did not close: it is set
    aside and the rest parsed again, until every row is one line. Lines that are not UTF-8
    are set aside first. Rows come in file order; the lines set aside follow as error rows."""
    body = raw[len(_BOM):] if raw.startswith(_BOM) else raw
    begin, stop = _line_spans(body)
    lines = [body[a:b] for a, b in zip(begin.tolist(), stop.tolist())]

    def text_of(number: int) -> str:
        return lines[number - 1].decode("utf-8", errors="backslashreplace")

    numbered = [number for number, line in enumerate(lines, start=1) if line]
    if not numbered:
        raise ValueError("the file is empty: no header line")
    header, candidates = numbered[0], numbered[1:]
    bad: dict[int, str] = {}
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        for number in numbered:
            try:
                lines[number - 1].decode("utf-8")
            except UnicodeDecodeError as exc:
                if number == header:
                    raise ValueError(f"line {number}: the header is {_not_utf8(exc)}") from None
                bad[number] = f"{_not_utf8(exc)}: {_preview(text_of(number))}"
        candidates = [number for number in candidates if number not in bad]

    sep = delimiter.encode()
    for _ in range(_MAX_PASSES):
        prefixes = [b"\n%d%s" % (n, sep) for n in candidates]
        table, invalid = _read_numbered(
            b"".join([_LINE.encode(), sep, lines[header - 1],
                      *chain.from_iterable(zip(prefixes, [lines[n - 1] for n in candidates])),
                      b"\n"]),
            delimiter=delimiter)
        # the lines no row started on were swallowed by the row started last before them
        anchors = np.sort(np.concatenate(([header], table.column(_LINE).to_numpy(),
                                          np.fromiter(invalid, dtype=np.int64))))
        lines_in = np.asarray(candidates, dtype=np.int64)
        at = np.minimum(np.searchsorted(anchors, lines_in), len(anchors) - 1)
        swallowed = lines_in[anchors[at] != lines_in]
        owners = anchors[np.searchsorted(anchors, swallowed) - 1]  # nondecreasing
        spilled = set(owners[np.r_[True, owners[1:] != owners[:-1]]].tolist()
                      if len(owners) else [])
        breaks = _broken_rows(table, skip=_LINE)
        if breaks is not None:
            spilled.update(table.column(_LINE).filter(breaks).to_pylist())
        spilled.update(n for n, (_, _, text) in invalid.items() if "\n" in text or "\r" in text)
        if header in spilled:
            raise ValueError(f"line {header}: the header opens a quote it does not close")
        if not spilled:
            break
        for number in spilled:
            bad[number] = f"a quoted field is not closed on its line: {_preview(text_of(number))}"
        candidates = [number for number in candidates if number not in spilled]
    else:
        raise ValueError(f"quotes left open on lines {', '.join(map(str, sorted(spilled)[:10]))}"
                         f" still run across lines after {_MAX_PASSES} passes")
    for number, (expected, actual, _) in invalid.items():
        bad[number] = f"expected {expected} fields, got {actual}: {_preview(text_of(number))}"
    log.info("csv: %d line(s) of %d set aside after a line-by-line parse", len(bad),
             len(numbered) - 1)
    return _with_bad_rows(table.drop_columns([_LINE]), sorted(bad.items()), text_of)


def _read_numbered(data: bytes, *,
                   delimiter: str) -> tuple[pa.Table, dict[int, tuple[int, int, str]]]:
    """Parse CSV lines that each start with their line number (in one block: a quote left
    open never stops at a block end): the rows, with the numbers in column _LINE, and the
    rows pyarrow rejected as {line: (fields expected, fields found, text)}, not counting the
    number."""
    invalid: dict[int, tuple[int, int, str]] = {}

    def note(row: pacsv.InvalidRow) -> str:
        number, _, text = row.text.partition(delimiter)
        invalid[int(number)] = (row.expected_columns - 1, row.actual_columns - 1, text)
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(block_size=min(max(len(data) + 1, 1 << 20), (1 << 31) - 1)),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=note),
        convert_options=pacsv.ConvertOptions(column_types={_LINE: pa.int64()}))
    return table, invalid


def _parse_jsonl(raw: bytes) -> pa.Table:
    try:
        table = pajson.read_json(io.BytesIO(raw))
        table.validate(full=True)  # a string that is not UTF-8 fails here, not in a stage
        return table
    except pa.ArrowInvalid:
        pass  # some line is broken: parse line by line, keep the broken ones
    lines = raw.splitlines()

    def text_of(number: int) -> str:
        return lines[number - 1].decode("utf-8", errors="backslashreplace")

    records: list[tuple[int, dict[str, Any]]] = []
    bad: BadLines = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((number, f"{_not_utf8(exc)}: {_preview(text_of(number))}"))
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            bad.append((number, f"invalid JSON ({exc}): {_preview(text)}"))
            continue
        if isinstance(value, dict):
            records.append((number, value))
        else:
            bad.append((number, f"expected a JSON object, got {type(value).__name__}"))
    records = _agreeing_kinds(records, bad)
    frame = pd.DataFrame.from_records([record for _, record in records])
    return _with_bad_rows(_arrow_or_json_text(frame), sorted(bad), text_of)


def _json_kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _agreeing_kinds(records: list[tuple[int, dict[str, Any]]],
                    bad: BadLines) -> list[tuple[int, dict[str, Any]]]:
    """Records whose fields have the kind most lines give them (an API that sends a list in
    one line and a string in another). The others go to `bad` with the field and both
    kinds: quarantined with their reason, not failing the whole source."""
    kinds: dict[str, Counter[str]] = {}
    for _, record in records:
        for field, value in record.items():
            kind = _json_kind(value)
            if kind is not None:
                kinds.setdefault(field, Counter())[kind] += 1
    usual = {field: seen.most_common(1)[0][0] for field, seen in kinds.items() if len(seen) > 1}
    if not usual:
        return records
    kept = []
    for number, record in records:
        odd = next(((f, k) for f in usual if (k := _json_kind(record.get(f))) not in (None, usual[f])),
                   None)
        if odd is None:
            kept.append((number, record))
        else:
            bad.append((number, f"field {odd[0]!r} is a {odd[1]} where other lines have a "
                                f"{usual[odd[0]]}"))
    return kept


def _json_text(value: Any) -> str | None:
    missing = value is None or (isinstance(value, float) and value != value)  # None or NaN
    return None if missing else json.dumps(value)


def _arrow_or_json_text(frame: pd.DataFrame) -> pa.Table:
    """`frame` as Arrow; a column Arrow cannot type (lists of mixed items, say) is kept as
    JSON text instead of failing the source."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    for column in frame.columns:
        try:
            pa.array(frame[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            log.warning("jsonl column %r holds values of mixed types: kept as JSON text", column)
            frame[column] = frame[column].map(_json_text)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _with_bad_rows(table: pa.Table, bad: BadLines, text_of: Callable[[int], str]) -> pa.Table:
    """Append one row per unparseable line, carrying only SOURCE_COLUMNS: the reason
    ("line N: problem"), the line number and the line's whole text (`text_of(N)`)."""
    if not bad:
        return table
    log.warning("%d source line(s) could not be parsed; they will be quarantined", len(bad))
    errors = pa.table({
        SOURCE_ERROR_COLUMN: pa.array([f"line {n}: {problem}" for n, problem in bad],
                                      type=pa.string()),
        SOURCE_LINE_COLUMN: pa.array([n for n, _ in bad], type=pa.int64()),
        SOURCE_TEXT_COLUMN: pa.array([text_of(n) for n, _ in bad], type=pa.string()),
    })
    return pa.concat_tables([table, errors], promote_options="default")
