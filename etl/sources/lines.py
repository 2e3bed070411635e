"""CSV and JSON lines parsed so that no line is lost: pyarrow parses the whole text at
once, and a line it cannot make a row of (a quote not closed on its line, a wrong number of
fields, bytes that are not UTF-8, invalid JSON) becomes a row carrying only SOURCE_COLUMNS:
the reason with the line number, the line number, and the line's whole raw text, so cleaning
sends it to quarantine and a replay can recover it. A CSV record is one physical line: a
broken line costs that line, never the lines after it.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from itertools import chain
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from etl.sources.base import SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN

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


def _one_row_per_line(raw: bytes, table: pa.Table) -> bool:
    """Whether pyarrow made exactly one row of every non-empty line after the header, no
    row holding a line break (a quote carried it across lines).

    Cheap where it can be, exact always. A row ends only at a line end, and its last line
    is not empty (pyarrow skips empty lines), so rows <= non-empty lines - 1 <= lines - 1:
    rows == lines - 1 proves it with a count of line ends; any other row count is settled
    by the exact count of non-empty lines (`_line_spans`). A line break can only be inside
    a quoted field (parse_csv reads with pyarrow's default quote character, ", and no
    escape character), so a file without a " needs no search of its values. A column name
    that is not UTF-8 raises UnicodeDecodeError from `_broken_rows`, and is False here: the
    header is broken."""
    rows = table.num_rows
    if rows != _line_count(raw) - 1:
        starts, stops = _line_spans(raw)
        if rows != max(int(np.count_nonzero(stops > starts)) - 1, 0):
            return False
    if b'"' not in raw:
        return _names_and_values_are_text(table)
    return _broken_rows(table) is None


def parse_csv(raw: bytes, *, delimiter: str) -> pa.Table:
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
        try:
            if not rejected and _one_row_per_line(raw, table):
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


def parse_jsonl(raw: bytes) -> pa.Table:
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
