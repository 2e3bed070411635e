"""CSV and JSON lines parsed so that no line is lost: pyarrow parses the whole text at
once, and a line it cannot make a row of (a quote not closed on its line, a wrong number of
fields, bytes that are not UTF-8, invalid JSON) becomes a row carrying only SOURCE_COLUMNS:
the reason with the line number, the line number, and the line's whole raw text, so cleaning
sends it to quarantine and a replay can recover it. A CSV record is one physical line: a
broken line costs that line, never the lines after it.

How a file is read is a `CsvOptions` or `JsonOptions` (FileSource's keyword options, checked
there); `reparse_lines` reads kept raw lines again with the options of a fixed source, one
row per line, for a quarantine replay.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, Callable, Sequence

from etl.core.lazy import LazyModule
from etl.sources.base import SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN

pd = LazyModule("pandas")
np = LazyModule("numpy")
pa = LazyModule("pyarrow")
pc = LazyModule("pyarrow.compute")
pacsv = LazyModule("pyarrow.csv")
pajson = LazyModule("pyarrow.json")

log = logging.getLogger(__name__)


#: How much of a bad line its reason shows; the whole line is in SOURCE_TEXT_COLUMN.
PREVIEW = 200
#: The line-number column `_parse_csv_by_line` puts in front of every line.
_LINE = "_etl_line_number_"
#: Re-parses of the lines a quote spilled over before giving up (nested spills are rare).
_MAX_PASSES = 20
_BOM = b"\xef\xbb\xbf"

#: Unparseable lines: (line number, problem); the problem ends with the line's preview.
BadLines = list[tuple[int, str]]

#: pandas' (and pyarrow's) default null markers: read as null in every column, as
#: pandas.read_csv does. Written out rather than read from pyarrow.csv.ConvertOptions, so
#: that defining a CSV source imports no pyarrow (the sender of a distributed run parses
#: nothing); a test holds this list equal to pyarrow's own.
DEFAULT_NULL_VALUES: tuple[str, ...] = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null")
#: JSON kinds that are structures: a field mixing one with other kinds is never made text.
_STRUCTURES = frozenset({"list", "object"})
#: What JsonOptions.mixed_types may be.
MIXED_TYPES = ("text", "json", "quarantine")


@dataclass(frozen=True)
class CsvOptions:
    """How a CSV file is read (FileSource checks the values; see its docstring)."""

    delimiter: str = ","
    quotechar: str | None = '"'
    encoding: str = "utf-8"
    header: bool = True
    column_names: tuple[str, ...] | None = None
    skip_rows: int = 0
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    column_types: tuple[tuple[str, str], ...] = ()  # (column, pyarrow type name)

    def types(self) -> dict[str, pa.DataType]:
        return {name: pa.type_for_alias(alias) for name, alias in self.column_types}


@dataclass(frozen=True)
class JsonOptions:
    """How a JSON-lines file is read: its encoding, and what a field whose values are of
    different kinds in different lines becomes ("text": every value as text, strings as
    they are and others as JSON; "json": every value as JSON text, strings quoted;
    "quarantine": lines whose kind is not the usual one are error rows). A field where a
    list or an object meets another kind is quarantined line by line whatever the option:
    as text the structure would be lost to the stages that take it apart."""

    encoding: str = "utf-8"
    mixed_types: str = "text"


def import_readers() -> None:
    """Import pyarrow with its CSV and JSON readers in the calling thread, before a parse
    begins on another (FileSource.parse_ahead): that thread then imports nothing while this
    one goes on importing pandas, as when the readers were imported with this module."""
    pacsv.read_csv, pajson.read_json, pc.sum  # noqa: B018 - LazyModule imports on access


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def _to_utf8(raw: bytes, encoding: str) -> bytes:
    """`raw` transcoded from `encoding` to UTF-8, in one pass. Bytes that are not text in
    that encoding stay as they are (surrogateescape), so the lines holding them fail as
    text that is not UTF-8 and become error rows, like any undecodable line."""
    if _is_utf8(encoding):
        return raw
    return raw.decode(encoding, errors="surrogateescape").encode("utf-8", errors="surrogateescape")


def _preview(text: str) -> str:
    if len(text) <= PREVIEW:
        return text
    return f"{text[:PREVIEW]}... ({len(text):,} characters, whole in {SOURCE_TEXT_COLUMN})"


def _not_utf8(exc: UnicodeDecodeError, encoding: str = "UTF-8") -> str:
    byte = exc.object[exc.start]
    return f"not {encoding} text (byte {byte:#04x} at position {exc.start + 1} of the line)"


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
    boolean mask; None when there are none. Binary columns (not UTF-8) count as such rows.
    Plain substring searches, one per break character: a regex over every value cost 3x."""
    found = None
    for name, column in zip(table.column_names, table.columns):
        if name == skip:
            continue
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            return pa.array(np.ones(table.num_rows, dtype=bool))
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for brk in ("\n", "\r"):
                broken = pc.fill_null(pc.match_substring(column, brk), False)
                found = broken if found is None else pc.or_(found, broken)
    if found is None or not pc.any(found).as_py():
        return None
    return found


def _names_and_values_are_text(table: pa.Table) -> bool:
    """No column name that is not UTF-8 (a broken header) and no binary column (values that
    are not UTF-8): what `_broken_rows` rules out besides line breaks."""
    try:
        table.column_names
    except UnicodeDecodeError:
        return False
    return not any(pa.types.is_binary(t) or pa.types.is_large_binary(t)
                   for t in table.schema.types)


def _line_count(raw: bytes) -> int:
    """How many physical lines `raw` holds, empty ones included, as `_line_spans` splits
    them (\n, \r\n or a lone \r; no empty last line after the final terminator), without
    building the spans: a count of \n for the usual file, which allocates nothing."""
    if not raw:
        return 0
    if b"\r" not in raw:
        ends = raw.count(b"\n")
    else:  # \r\n is one terminator, a lone \r another
        data = np.frombuffer(raw, dtype=np.uint8)
        cr = data == 13
        lf = data == 10
        ends = (int(np.count_nonzero(lf)) + int(np.count_nonzero(cr))
                - int(np.count_nonzero(cr[:-1] & lf[1:])))
    return ends + (0 if raw.endswith((b"\n", b"\r")) else 1)


def _one_row_per_line(raw: bytes, table: pa.Table, quotechar: str | None = '"') -> bool:
    """Whether pyarrow made exactly one row of every non-empty line after the header, no
    row holding a line break (a quote carried it across lines). `table` is pyarrow's parse
    of `raw` with no invalid-row handler (a row of the wrong width raised).

    Cheap where it can be, exact always. A row ends only at a line end, and its last line
    is not empty (pyarrow skips empty lines), so rows <= non-empty lines - 1 <= lines - 1:
    rows == lines - 1 proves it with a count of line ends; any other row count is settled
    by the exact count of non-empty lines (`_line_spans`). A line break can only be inside
    a quoted field (parse_csv reads with no escape character), so a file without the quote
    character (or read without quoting) needs neither the count nor a search of its
    values: each of its lines is a row, or the parse raised on a row's width. A column name
    that is not UTF-8 raises UnicodeDecodeError from `_broken_rows`, and is False here: the
    header is broken."""
    if quotechar is None or quotechar.encode() not in raw:
        # no quote: a line end always ends a row, and a row of the wrong width raised in the
        # parse, so every non-empty line after the header is one row (no count needed: a
        # count of line ends costs ~0.2 s on a 300 MB file, before any worker can start)
        return _names_and_values_are_text(table)
    rows = table.num_rows
    if rows != _line_count(raw) - 1:
        starts, stops = _line_spans(raw)
        if rows != max(int(np.count_nonzero(stops > starts)) - 1, 0):
            return False
    return _broken_rows(table) is None


def _convert_options(options: CsvOptions, *, text: Sequence[str] = (),
                     extra: dict[str, pa.DataType] | None = None) -> pacsv.ConvertOptions:
    """Null markers in every column, as pandas reads them; the typed columns, except those
    in `text` (read as text, to be converted and checked one value at a time)."""
    types = {name: (pa.string() if name in text else kind)
             for name, kind in options.types().items()}
    return pacsv.ConvertOptions(null_values=list(options.null_values), strings_can_be_null=True,
                                column_types={**types, **(extra or {})})


def _header_line(names: Sequence[str], options: CsvOptions) -> bytes:
    quote = options.quotechar
    fields = []
    for name in names:
        if quote and any(c in name for c in (options.delimiter, quote, "\n", "\r")):
            name = quote + name.replace(quote, quote * 2) + quote
        fields.append(name)
    return options.delimiter.join(fields).encode("utf-8")


def _first_line_end(raw: bytes) -> int:
    found = re.search(rb"\r\n|\n|\r", raw)
    return len(raw) if found is None else found.start()


def _prepared(raw: bytes, options: CsvOptions) -> tuple[bytes, int]:
    """`raw` as UTF-8, the skipped rows cut off, with a header line of the column names
    when they come from the options (put in front, or in place of the file's header), and
    what to add to a line's number in the result to get its number in the file. Only a
    file read with options other than the defaults is copied."""
    offset = 0
    raw = _to_utf8(raw, options.encoding)
    if options.skip_rows:
        starts, _ = _line_spans(raw)
        raw = raw[int(starts[options.skip_rows]):] if options.skip_rows < len(starts) else b""
        offset = options.skip_rows
    if options.header and options.column_names is None:
        return raw, offset
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if options.header:  # the file's header line gives way to column_names
        assert options.column_names is not None
        return _header_line(options.column_names, options) + raw[_first_line_end(raw):], offset
    names = options.column_names
    if names is None:  # pyarrow's habit: f0, f1, ... as many as the first line has fields
        first = raw[:_first_line_end(raw)]
        if not first.strip():
            raise ValueError("the file is empty: no line to count the fields of")
        count = pacsv.read_csv(pa.BufferReader(first + b"\n"), read_options=pacsv.ReadOptions(
            autogenerate_column_names=True), parse_options=pacsv.ParseOptions(
            delimiter=options.delimiter, quote_char=options.quotechar or False)).num_columns
        names = tuple(f"f{i}" for i in range(count))
    return _header_line(names, options) + b"\n" + raw, offset - 1


def parse_csv(raw: bytes, *, delimiter: str = ",", options: CsvOptions | None = None) -> pa.Table:
    """The CSV as a table with one row per data line: a record is one physical line.

    pyarrow parses the whole file at once; that is the answer when it made exactly one row of
    every non-empty line after the header. Otherwise some line is broken (too many or too few
    fields, bytes that are not UTF-8, a value that is not of its column's type under
    column_types, or a quote not closed on its line, which would carry the parser across the
    lines after it), and `_parse_csv_by_line` finds which lines, parses all the others, and
    keeps the broken ones whole. `options` (default: `delimiter` and the rest as pandas
    reads a CSV) say how the file is read."""
    options = options or CsvOptions(delimiter=delimiter)
    raw, offset = _prepared(raw, options)
    # No invalid_row_handler: a Python callback makes pyarrow parse on one thread (310 MB:
    # 1.6-2.1 s with it, 0.9 s without, on 2 cores). A row of the wrong width raises
    # instead, and the line-by-line parse below finds it, as a rejected row would have.
    try:
        table = pacsv.read_csv(pa.BufferReader(raw), parse_options=pacsv.ParseOptions(
            delimiter=options.delimiter, quote_char=options.quotechar or False),
            convert_options=_convert_options(options))
    except pa.ArrowInvalid as exc:  # a broken row, or a block that does not fit the types
        log.info("csv parse failed (%s); parsing line by line", exc)
    else:
        try:
            if _one_row_per_line(raw, table, options.quotechar):
                return table
        except UnicodeDecodeError:  # a column name that is not UTF-8: the header is broken
            pass
    return _parse_csv_by_line(raw, options=options, offset=offset)


def _parse_csv_by_line(raw: bytes, *, delimiter: str = ",", options: CsvOptions | None = None,
                       offset: int = 0) -> pa.Table:
    """Parse a CSV with broken lines: every line is prefixed with its number, so each row
    (and each row pyarrow rejects) says which line it started on. A line whose row swallowed
    the lines after it, or holds a line break, opened a quote it did not close: it is set
    aside and the rest parsed again, until every row is one line. Lines that are not UTF-8
    are set aside first, and then lines with a value not of its column's type (column_types).
    Rows come in file order; the lines set aside follow as error rows. `raw` is what
    `_prepared` made; `offset` turns its line numbers into the file's."""
    options = options or CsvOptions(delimiter=delimiter)
    delimiter = options.delimiter
    text_name = "UTF-8" if _is_utf8(options.encoding) else options.encoding
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
                    raise ValueError(f"line {number + offset}: the header is "
                                     f"{_not_utf8(exc, text_name)}") from None
                bad[number] = f"{_not_utf8(exc, text_name)}: {_preview(text_of(number))}"
        candidates = [number for number in candidates if number not in bad]

    sep = delimiter.encode()
    typed = [name for name, _ in options.column_types]
    for _ in range(_MAX_PASSES):
        prefixes = [b"\n%d%s" % (n, sep) for n in candidates]
        table, invalid = _read_numbered(
            b"".join([_LINE.encode(), sep, lines[header - 1],
                      *chain.from_iterable(zip(prefixes, [lines[n - 1] for n in candidates])),
                      b"\n"]),
            options=options, text=typed)
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
            raise ValueError(f"line {header + offset}: the header opens a quote it does not close")
        if not spilled:
            break
        for number in spilled:
            bad[number] = f"a quoted field is not closed on its line: {_preview(text_of(number))}"
        candidates = [number for number in candidates if number not in spilled]
    else:
        raise ValueError(f"quotes left open on lines "
                         f"{', '.join(str(n + offset) for n in sorted(spilled)[:10])}"
                         f" still run across lines after {_MAX_PASSES} passes")
    for number, (expected, actual, _) in invalid.items():
        bad[number] = f"expected {expected} fields, got {actual}: {_preview(text_of(number))}"
    table = _typed(table, options, bad, text_of)
    log.info("csv: %d line(s) of %d set aside after a line-by-line parse", len(bad),
             len(numbered) - 1)
    return _with_bad_rows(table.drop_columns([_LINE]),
                          sorted((n + offset, problem) for n, problem in bad.items()),
                          lambda n: text_of(n - offset))


def _typed(table: pa.Table, options: CsvOptions, bad: dict[int, str],
           text_of: Callable[[int], str]) -> pa.Table:
    """The columns named by column_types, read as text, converted to their types; a line
    with a value that does not convert goes to `bad`, naming the column, value and type.
    Only the distinct values of a column that failed to convert are tried one by one."""
    if not options.column_types:
        return table
    drop = None
    for name, alias in options.column_types:
        if name not in table.column_names:
            continue
        column, kind = table.column(name), pa.type_for_alias(alias)
        try:
            pc.cast(column, kind)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        wrong = []
        for value in pc.unique(column).to_pylist():
            try:
                pa.array([value], type=pa.string()).cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                wrong.append(value)
        mask = pc.is_in(column, value_set=pa.array(wrong, type=pa.string()))
        for number, value in zip(table.column(_LINE).filter(mask).to_pylist(),
                                 column.filter(mask).to_pylist()):
            bad.setdefault(number, f"column {name!r}: {value!r} is not {alias}: "
                                   f"{_preview(text_of(number))}")
        drop = mask if drop is None else pc.or_(drop, mask)
    if drop is not None:
        table = table.filter(pc.invert(drop))
    for name, alias in options.column_types:
        if name in table.column_names:
            at = table.column_names.index(name)
            table = table.set_column(at, name, pc.cast(table.column(name), pa.type_for_alias(alias)))
    return table


def _read_numbered(data: bytes, *, options: CsvOptions,
                   text: Sequence[str] = ()) -> tuple[pa.Table, dict[int, tuple[int, int, str]]]:
    """Parse CSV lines that each start with their line number (in one block: a quote left
    open never stops at a block end): the rows, with the numbers in column _LINE, and the
    rows pyarrow rejected as {line: (fields expected, fields found, text)}, not counting the
    number. Columns in `text` are read as text."""
    invalid: dict[int, tuple[int, int, str]] = {}
    delimiter = options.delimiter

    def note(row: pacsv.InvalidRow) -> str:
        number, _, text = row.text.partition(delimiter)
        invalid[int(number)] = (row.expected_columns - 1, row.actual_columns - 1, text)
        return "skip"

    table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(block_size=min(max(len(data) + 1, 1 << 20), (1 << 31) - 1)),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=options.quotechar or False,
                                          invalid_row_handler=note),
        convert_options=_convert_options(options, text=text, extra={_LINE: pa.int64()}))
    return table, invalid


def parse_jsonl(raw: bytes, *, options: JsonOptions | None = None, offset: int = 0) -> pa.Table:
    """JSON lines as a table: pyarrow reads the whole text at once when every line is a
    JSON object and every field keeps one kind; otherwise each line is read on its own, a
    broken line becomes an error row, and a field of mixed kinds is kept as text (see
    JsonOptions.mixed_types). `offset` is added to line numbers (for lines read again)."""
    options = options or JsonOptions()
    text_name = "UTF-8" if _is_utf8(options.encoding) else options.encoding
    raw = _to_utf8(raw, options.encoding)
    try:
        table = pajson.read_json(pa.BufferReader(raw))
        table.validate(full=True)  # a string that is not UTF-8 fails here, not in a stage
        return table
    except pa.ArrowInvalid:
        pass  # some line is broken: parse line by line, keep the broken ones
    lines = raw.splitlines()

    def text_of(number: int) -> str:
        return lines[number - 1 - offset].decode("utf-8", errors="backslashreplace")

    records: list[tuple[int, dict[str, Any]]] = []
    bad: BadLines = []
    for number, line in enumerate(lines, start=1 + offset):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((number, f"{_not_utf8(exc, text_name)}: {_preview(text_of(number))}"))
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
    records = _agreeing_kinds(records, bad, options.mixed_types)
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


def _agreeing_kinds(records: list[tuple[int, dict[str, Any]]], bad: BadLines,
                    mixed_types: str = "text") -> list[tuple[int, dict[str, Any]]]:
    """Records whose fields each have one kind (an API that sends a number in most lines
    and a string in some). A field of mixed kinds is made text in every record ("text":
    strings as they are, other values as JSON; "json": every value as JSON), for the
    stages to decide; with "quarantine", records whose kind is not the one most lines give
    the field go to `bad` with the field and both kinds instead."""
    kinds: dict[str, Counter[str]] = {}
    for _, record in records:
        for field, value in record.items():
            kind = _json_kind(value)
            if kind is not None:
                kinds.setdefault(field, Counter())[kind] += 1
    usual = {field: seen.most_common(1)[0][0] for field, seen in kinds.items() if len(seen) > 1}
    if not usual:
        return records
    if mixed_types != "quarantine":
        # Only scalars become text: a list or object made text would be lost to the stages
        # that take it apart (Explode, Flatten), so a field mixing a structure with other
        # kinds keeps its usual kind and the odd lines go to quarantine, raw text kept.
        textual = {field for field in usual if not (set(kinds[field]) & _STRUCTURES)}
        for field in textual:
            log.warning("jsonl field %r holds %s: kept as %s (mixed_types=%r)", field,
                        " and ".join(f"{kind}s ({n:,})" for kind, n in kinds[field].most_common()),
                        "JSON text" if mixed_types == "json" else "text", mixed_types)
        as_text = _json_text if mixed_types == "json" else _text
        for _, record in records:
            for field in textual:
                if field in record:
                    record[field] = as_text(record[field])
        usual = {field: kind for field, kind in usual.items() if field not in textual}
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


def _text(value: Any) -> str | None:
    """A JSON value as text: a string as it is, another value as its JSON."""
    return value if isinstance(value, str) else _json_text(value)


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


def reparse_lines(texts: Sequence[str], *, csv: CsvOptions | None = None,
                  json_options: JsonOptions | None = None, column_names: Sequence[str] = (),
                  numbers: Sequence[int | None] | None = None) -> pa.Table:
    """Kept raw lines (SOURCE_TEXT_COLUMN) read again with a source's options, one row per
    line in their order: a row of values, or an error row when the line still cannot be
    read. CSV lines are read under `column_names` (the source's columns), with no header
    line of their own. An error row names the line's number in the file, from `numbers`
    (default: its place among `texts`)."""
    if not texts:
        return pa.table({})
    encoding = (csv or json_options or JsonOptions()).encoding
    data = "\n".join(_as_read(text, encoding) for text in texts).encode(
        "utf-8", errors="surrogateescape") + b"\n"
    if csv is not None:
        options = replace(csv, encoding="utf-8", header=False, skip_rows=0,
                          column_names=tuple(column_names) or None)
        table = parse_csv(data, options=options)
    else:
        table = parse_jsonl(data, options=replace(json_options or JsonOptions(), encoding="utf-8"))
    table = _in_line_order(table, len(texts))
    if numbers is None or SOURCE_LINE_COLUMN not in table.column_names:
        return table
    file_lines = [None if n is None else int(n) for n in numbers]
    reasons = [None if reason is None or file_lines[i] is None
               else re.sub(r"^line \d+:", f"line {file_lines[i]}:", reason)
               for i, reason in enumerate(table.column(SOURCE_ERROR_COLUMN).to_pylist())]
    placed = [None if reason is None else file_lines[i] for i, reason in enumerate(reasons)]
    for name, values, kind in ((SOURCE_ERROR_COLUMN, reasons, pa.string()),
                               (SOURCE_LINE_COLUMN, placed, pa.int64())):
        table = table.set_column(table.column_names.index(name), name, pa.array(values, type=kind))
    return table


#: What backslashreplace made of a byte that was not text (always >= 0x80 for UTF-8).
_ESCAPED = re.compile(r"\\x[89a-f][0-9a-f]")
_ESCAPED_BYTES = re.compile(rb"\\x([89a-f][0-9a-f])")


def _as_read(text: str, encoding: str) -> str:
    """A kept line as the source reads it now. A line kept because its bytes were not text
    holds them backslash-escaped (\\xe9): they are made bytes again and decoded with the
    source's encoding as it is now (a fixed `encoding`); bytes still not text in it stay
    bytes, and the line is an error row again. (A line whose own text held such an escape
    is read with it made a byte: a rare ambiguity of the kept text.)"""
    if not _ESCAPED.search(text):
        return text
    raw = _ESCAPED_BYTES.sub(lambda m: bytes([int(m.group(1), 16)]),
                             text.encode("utf-8", errors="surrogateescape"))
    return raw.decode(encoding, errors="surrogateescape")


def _in_line_order(table: pa.Table, count: int) -> pa.Table:
    """A parse of `count` non-empty lines (rows of the good lines in order, then one error
    row per bad line, numbered from 1) with its rows in line order."""
    if SOURCE_LINE_COLUMN in table.column_names:
        errors = table.column(SOURCE_LINE_COLUMN)
        good_rows = int(table.num_rows - pc.sum(pc.is_valid(errors)).as_py())
        numbers = errors.to_numpy(zero_copy_only=False)[good_rows:].astype(np.int64)
    else:
        good_rows, numbers = table.num_rows, np.array([], dtype=np.int64)
    if good_rows + len(numbers) != count:
        raise ValueError(f"{count} lines read again gave {good_rows + len(numbers)} rows")
    position = np.empty(count, dtype=np.int64)
    is_bad = np.zeros(count, dtype=bool)
    is_bad[numbers - 1] = True
    position[~is_bad] = np.arange(good_rows)
    position[numbers - 1] = good_rows + np.arange(len(numbers))
    return table.take(pa.array(position))
