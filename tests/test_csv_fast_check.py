"""The cheap check that pyarrow made one row per CSV line agrees with the exact one.

`etl.sources.lines.parse_csv` accepts pyarrow's whole-file parse when every non-empty line
after the header became one row and no row holds a line break. It settles that with a count
of line ends, falling back to the exact per-line spans only when the count is not
conclusive; a file holding no quote character needs neither (each line is a row, or the
parse raised on a row's width). These cases are the
edges of that shortcut: CRLF and lone-CR line ends, empty lines, a quoted field holding a
line break, no final line end, a byte-order mark, bytes that are not UTF-8. In each the
cheap verdict must equal the exact one, and the table must hold the same rows as the slow
line-by-line parse.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from etl.sources import lines
from etl.sources.base import SOURCE_ERROR_COLUMN

CASES = {
    "lf": b"id,v\n1,a\n2,b\n",
    "no final line end": b"id,v\n1,a\n2,b",
    "crlf": b"id,v\r\n1,a\r\n2,b\r\n",
    "crlf, no final line end": b"id,v\r\n1,a\r\n2,b",
    "lone cr": b"id,v\r1,a\r2,b\r",
    "mixed line ends": b"id,v\n1,a\r\n2,b\r3,c\n",
    "empty lines": b"id,v\n1,a\n\n\n2,b\n",
    "empty crlf lines": b"id,v\r\n\r\n1,a\r\n\r\n2,b\r\n",
    "leading empty line": b"\nid,v\n1,a\n",
    "byte-order mark": b"\xef\xbb\xbfid,v\n1,a\n2,b\n",
    "quoted values, no break": b'id,v\n1,"a,b"\n2,"c ""d"""\n',
    "quoted lf in a value": b'id,v\n1,"a\nb"\n2,c\n',
    "quoted crlf in a value": b'id,v\r\n1,"a\r\nb"\r\n2,c\r\n',
    "quote closed lines later": b'id,v,n\n1,a,1\n2,"b,2\n3,c",3\n4,d,4\n',
    "quoted break, no final line end": b'id,v\n1,"a\nb"',
    "not utf-8 value": b"id,v\n1,a\xff\n2,b\n",
    "not utf-8 header": b"id\xff,v\n1,a\n",
}


def _exact_verdict(raw: bytes, table: pa.Table) -> bool:
    """The check as it was before the shortcut: spans of every line, a search of every
    string value (a name that is not UTF-8 made it fail)."""
    starts, stops = lines._line_spans(raw)
    data_lines = max(int(np.count_nonzero(stops > starts)) - 1, 0)
    try:
        return table.num_rows == data_lines and lines._broken_rows(table) is None
    except UnicodeDecodeError:
        return False


def _pyarrow_parse(raw: bytes) -> tuple[pa.Table, int]:
    rejected = []
    table = pacsv.read_csv(io.BytesIO(raw), parse_options=pacsv.ParseOptions(
        invalid_row_handler=lambda row: rejected.append(row) or "skip"))
    return table, len(rejected)


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_the_line_count_equals_the_exact_spans(raw: bytes) -> None:
    # Given a CSV with one of the line-end edges
    # When its lines are counted cheaply and split exactly
    counted = lines._line_count(raw)
    starts, _ = lines._line_spans(raw)
    # Then both see the same number of physical lines
    assert counted == len(starts)


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_the_cheap_verdict_equals_the_exact_one(raw: bytes) -> None:
    # Given pyarrow's whole-file parse of a CSV with one of the edges
    table, rejected = _pyarrow_parse(raw)
    assert rejected == 0
    # When the parse is checked the cheap way and the exact way
    cheap = lines._one_row_per_line(raw, table)
    exact = _exact_verdict(raw, table)
    # Then both give the same verdict
    assert cheap == exact


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_the_parse_holds_the_rows_of_the_line_by_line_parse(raw: bytes) -> None:
    # Given a CSV with one of the edges, and its header readable
    if raw.startswith(b"id\xff"):
        pytest.skip("a header that is not UTF-8 is refused by both parses")
    # When it is parsed (the shortcut may accept pyarrow's parse) and parsed line by line
    fast = lines.parse_csv(raw, delimiter=",")
    slow = lines._parse_csv_by_line(raw, delimiter=",")
    # Then both hold the same rows, error rows included: no line is lost either way
    assert fast.to_pylist() == slow.to_pylist()


@pytest.mark.parametrize("name, accepted", [
    ("lf", True), ("no final line end", True), ("crlf", True), ("crlf, no final line end", True),
    ("lone cr", True), ("mixed line ends", True), ("byte-order mark", True),
    ("quoted values, no break", True), ("not utf-8 value", False),
])
def test_a_conclusive_count_needs_no_line_spans(name: str, accepted: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a CSV without empty lines, parsed by pyarrow into one row per line, and line
    # spans that must not be built
    raw = CASES[name]
    table, _ = _pyarrow_parse(raw)

    def no_spans(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("the count of line ends was conclusive: no spans needed")

    monkeypatch.setattr(lines, "_line_spans", no_spans)
    # When the parse is checked
    verdict = lines._one_row_per_line(raw, table)
    # Then the count settles it: accepted for text lines, refused for a binary column
    assert verdict is accepted


def test_empty_lines_fall_back_to_the_exact_spans_and_are_accepted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a CSV with a quoted value and empty lines between its rows
    raw = b'id,v\r\n\r\n1,"a"\r\n\r\n2,b\r\n'
    table, _ = _pyarrow_parse(raw)
    calls = []
    exact = lines._line_spans
    monkeypatch.setattr(lines, "_line_spans", lambda raw: calls.append(raw) or exact(raw))
    # When the parse is checked
    verdict = lines._one_row_per_line(raw, table)
    # Then the count of line ends was not conclusive, the spans were built, and the parse is
    # accepted: empty lines are no rows
    assert calls and verdict is True


def test_a_quoted_line_break_becomes_an_error_row_not_a_lost_line() -> None:
    # Given a CRLF file whose line 2 opens a quote that line 3 closes
    raw = b'id,v\r\n1,"a\r\nb"\r\n2,c\r\n'
    # When it is parsed
    table = lines.parse_csv(raw, delimiter=",")
    # Then every line is a row: lines 2 and 3 as error rows kept whole, line 4 read
    rows = table.to_pylist()
    assert len(rows) == 3
    assert [r["id"] for r in rows if r[SOURCE_ERROR_COLUMN] is None] == [2]


def test_a_file_without_quotes_is_accepted_without_counting_its_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a quote-free CSV with empty lines and mixed line ends, parsed whole by pyarrow
    raw = b"id,v\r\n\r\n1,a\n\n2,b\r3,c"
    table, _ = _pyarrow_parse(raw)

    def no_count(raw: bytes) -> None:
        raise AssertionError("a quote-free file needs no count of its lines")

    monkeypatch.setattr(lines, "_line_count", no_count)
    monkeypatch.setattr(lines, "_line_spans", no_count)
    # When the parse is checked
    verdict = lines._one_row_per_line(raw, table)
    # Then it is accepted, and the table holds every non-empty line after the header
    assert verdict is True
    assert table.column("v").to_pylist() == ["a", "b", "c"]
