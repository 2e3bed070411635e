"""Bad input files: a broken line costs that line, kept whole for replay, never the file.

Each case runs the real `etl` CLI in a subprocess on a project in a temporary folder: a
line the CSV parser cannot read (an unterminated quote, too many fields, bytes that are not
UTF-8) is quarantined with its true line number and its whole raw text while every other
line loads; a source file that cannot be read at all (a truncated or non-gzip `.gz`, a
non-zip `.zip`) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from etl.sources.base import SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN
from etl.sources.files import FileSource


def etl(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = str(workdir)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=env,
                          text=True, capture_output=True, timeout=300)


def _pipeline(workdir: Path, source: str, *, batch_size: int = 2_000) -> None:
    (workdir / "mypipes.py").write_text(textwrap.dedent(f"""
        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards
        from stages import Trim, Upper

        orders = Pipeline(
            name="orders",
            source=FileSource({source!r}),
            stages=[Trim(columns=["sku"]), Upper(columns=["sku"])],
            sink=ParquetSink("out/orders"),
            key=["order_id"],
            shards=HashShards(["order_id"], 3),
            batch_size={batch_size},
        )
    """))


def _run(workdir: Path) -> tuple[subprocess.CompletedProcess[str], dict, list[dict]]:
    """`etl run`, then the run's totals and its quarantined rows (`quarantine list --json`)."""
    result = etl(workdir, "run", "-p", "mypipes:orders", "--no-progress", "--processes", "1")
    status = json.loads(etl(workdir, "status", "--json").stdout)
    listed = etl(workdir, "quarantine", "list", status["run"]["run_id"], "--json",
                 "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)  # one JSON array, as every --json
    return result, status["totals"], rows


def _loaded(workdir: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in (workdir / "out" / "orders").glob("*.parquet"))


def _csv_lines(rows: int) -> list[str]:
    return ["order_id,sku,amount"] + [f"{i},sku{i % 7} ,{i * 0.5}" for i in range(rows)]


# -- item 2: an unterminated quote does not swallow the file -----------------------------


def test_an_unterminated_quote_costs_its_line_only_and_the_line_is_kept_whole(tmp_path: Path) -> None:
    # Given a 20,000-row CSV where the row of order 700 (file line 702) opens a quote it never
    # closes, and that line is longer than any preview (3,000 characters)
    lines = _csv_lines(20_000)
    bad = '700,"SKU unterminated' + "x" * 3_000 + ",5.0"
    lines[701] = bad
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    _pipeline(tmp_path, "orders.csv")
    # When the pipeline is run
    result, totals, quarantined = _run(tmp_path)
    # Then it completes, and rows in equal the file's 20,000 data lines: 19,999 loaded, 1
    # quarantined
    assert result.returncode == 0, result.stderr
    assert (totals["rows_fetched"], totals["rows_loaded"], totals["rows_quarantined"]) == \
        (20_000, 19_999, 1)
    assert sorted(_loaded(tmp_path)["order_id"]) == [i for i in range(20_000) if i != 700]
    # And the quarantined row names its true line number and holds the whole line, untruncated
    [row] = quarantined
    assert row["_stage"] == "source"
    assert row["_reason"].startswith("line 702: ") and "quote" in row["_reason"]
    assert int(row[SOURCE_LINE_COLUMN]) == 702
    assert row[SOURCE_TEXT_COLUMN] == bad


def test_a_quote_closed_lines_later_loses_no_line_silently(tmp_path: Path) -> None:
    # Given a CSV where line 3 opens a quote that line 4 closes with the right field count,
    # so a parser reading quotes across lines would make lines 3-4 one valid row
    path = tmp_path / "q.csv"
    path.write_text('id,v,n\n1,a,1\n2,"b,2\n3,c",3\n4,d,4\n')
    # When read
    frame = FileSource(str(path)).frame()
    # Then every data line is a row: line 3, which opened the quote, is an error row with its
    # line number and text; line 4 is read on its own (a quote inside a field is text)
    assert len(frame) == 4
    good = frame[frame[SOURCE_ERROR_COLUMN].isna()]
    assert sorted(good["id"].astype(int)) == [1, 3, 4]
    assert good.set_index(good["id"].astype(int)).loc[3, "v"] == 'c"'
    errors = frame[frame[SOURCE_ERROR_COLUMN].notna()]
    assert list(zip(errors[SOURCE_LINE_COLUMN].astype(int), errors[SOURCE_TEXT_COLUMN])) == \
        [(3, '2,"b,2')]
    assert errors[SOURCE_ERROR_COLUMN].iloc[0] == \
        'line 3: a quoted field is not closed on its line: 2,"b,2'


def test_unterminated_quotes_in_a_file_of_many_parse_blocks_cost_their_lines_only(
        tmp_path: Path) -> None:
    # Given a 200,000-row CSV (several parser blocks) with unterminated quotes in three places
    lines = _csv_lines(200_000)
    broken = {1_002: '1000,"x,1', 90_002: '90000,y,"2', 199_999: '199997,"z,3'}
    for number, text in broken.items():
        lines[number - 1] = text
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    # When read
    frame = FileSource(str(path)).frame()
    # Then every data line is a row, and exactly the three broken lines are error rows
    assert len(frame) == 200_000
    errors = frame[frame[SOURCE_ERROR_COLUMN].notna()]
    assert dict(zip(errors[SOURCE_LINE_COLUMN].astype(int), errors[SOURCE_TEXT_COLUMN])) == broken
    good = frame[frame[SOURCE_ERROR_COLUMN].isna()]
    assert sorted(good["order_id"].astype(int)) == [i for i in range(200_000)
                                                    if i not in (1000, 90000, 199997)]


# -- item 9: the reason names the real line number ---------------------------------------


def test_a_line_with_too_many_fields_is_quarantined_with_its_line_number(tmp_path: Path) -> None:
    # Given a CSV whose fifth line has a field too many
    lines = _csv_lines(100)
    lines[4] = "3,sku3,1.5,EXTRA"
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    _pipeline(tmp_path, "orders.csv", batch_size=40)
    # When the pipeline is run
    result, totals, quarantined = _run(tmp_path)
    # Then the line is quarantined under its line number (not "line None"), the rest loads
    assert result.returncode == 0, result.stderr
    assert (totals["rows_fetched"], totals["rows_loaded"], totals["rows_quarantined"]) == (100, 99, 1)
    [row] = quarantined
    assert row["_reason"].startswith("line 5: expected 3 fields, got 4")
    assert (int(row[SOURCE_LINE_COLUMN]), row[SOURCE_TEXT_COLUMN]) == (5, "3,sku3,1.5,EXTRA")


# -- item 3: bytes that are not UTF-8 cost their line, not the batch ---------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_line_that_is_not_utf8_is_quarantined_and_the_rest_loads(tmp_path: Path, kind: str) -> None:
    # Given a 500-row file (CSV or JSON lines) whose line for order 250 holds the bytes ff fe
    if kind == "csv":
        lines = [line.encode() for line in _csv_lines(500)]
        lines[251] = b"250,sku\xff\xfe ,125.0"
        line_number = 252
    else:
        lines = [json.dumps({"order_id": i, "sku": f"sku{i % 7} ", "amount": i * 0.5}).encode()
                 for i in range(500)]
        lines[250] = b'{"order_id": 250, "sku": "sku\xff\xfe ", "amount": 125.0}'
        line_number = 251
    (tmp_path / f"orders.{kind}").write_bytes(b"\n".join(lines) + b"\n")
    _pipeline(tmp_path, f"orders.{kind}", batch_size=100)
    # When the pipeline is run (its stages work on the text column)
    result, totals, quarantined = _run(tmp_path)
    # Then it completes: that line is quarantined with its line number and its bytes escaped,
    # every other line is loaded
    assert result.returncode == 0, result.stderr + result.stdout
    assert (totals["rows_fetched"], totals["rows_loaded"], totals["rows_quarantined"]) == (500, 499, 1)
    assert sorted(_loaded(tmp_path)["order_id"]) == [i for i in range(500) if i != 250]
    [row] = quarantined
    assert row["_stage"] == "source"
    assert row["_reason"].startswith(f"line {line_number}: ") and "UTF-8" in row["_reason"]
    assert int(row[SOURCE_LINE_COLUMN]) == line_number
    assert row[SOURCE_TEXT_COLUMN] == lines[line_number - 1].decode(errors="backslashreplace")
    assert "\\xff\\xfe" in row[SOURCE_TEXT_COLUMN]


# -- item 8: an unreadable archive is one line and exit status 2 --------------------------


def _gzip_bytes() -> bytes:
    return gzip.compress("\n".join(_csv_lines(5_000)).encode() + b"\n")


@pytest.mark.parametrize("name, data, says", [
    ("orders.csv.gz", _gzip_bytes()[:20_000], "truncated"),
    ("orders.csv.gz", b"order_id,sku,amount\n1,a,2.0\n", "not a gzip file"),
    ("orders.csv.zip", b"order_id,sku,amount\n1,a,2.0\n", "not a zip file"),
], ids=["truncated-gz", "not-gzip", "not-zip"])
def test_an_unreadable_archive_is_one_line_and_exit_status_2(tmp_path: Path, name: str,
                                                              data: bytes, says: str) -> None:
    # Given a pipeline whose source archive is broken
    (tmp_path / name).write_bytes(data)
    _pipeline(tmp_path, name)
    # When it is run
    result = etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress", "--processes", "1")
    # Then it stops with exit status 2 and one line naming the file and the problem
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert name in line and says in line.lower()


def test_a_zip_holding_a_csv_is_still_read(tmp_path: Path) -> None:
    # Given a good zip archive holding one CSV
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("orders.csv", "\n".join(_csv_lines(10)) + "\n")
    path = tmp_path / "orders.csv.zip"
    path.write_bytes(buffer.getvalue())
    # When read, Then every row is there
    assert sorted(FileSource(str(path)).frame()["order_id"]) == list(range(10))
