"""FileSource options as pandas and pyarrow name them: null_values, delimiter, quotechar,
encoding, header / column_names, skip_rows, column_types (CSV) and mixed_types (JSON lines).

Each option is read from a real file in tmp_path; the end-to-end cases run the real `etl`
CLI: null markers reach a ParseNumber stage as nulls, a changed option is a changed source
for a run, and a bad option value is one line on stderr with exit status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from etl.core.errors import ConfigError, SourceError
from etl.sources.base import SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN
from etl.sources.files import FileSource
from etl.sources.windows import Window


def etl(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), os.getcwd()])
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=env,
                          text=True, capture_output=True, timeout=300)


def _write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def _good(frame: pd.DataFrame) -> pd.DataFrame:
    if SOURCE_ERROR_COLUMN not in frame.columns:
        return frame
    return frame[frame[SOURCE_ERROR_COLUMN].isna()].drop(
        columns=[SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN])


MESSY = ("id,species,mass,sex\n"
         "1,Adelie,3750,male\n"
         "2,Adelie,NA,NA\n"
         "3,Gentoo,,\n"
         "4,Gentoo,N/A,female\n"
         "5,Chinstrap,null,NULL\n"
         "6,Chinstrap,4100,nan\n")


# -- null_values ---------------------------------------------------------------------------


def test_default_null_markers_are_null_in_every_column_as_pandas_reads_them(tmp_path: Path) -> None:
    # Given a CSV with "NA", "", "N/A", "null", "NULL", "nan" in a numeric and a text column
    path = _write(tmp_path, "penguins.csv", MESSY)
    # When it is read with the default options, and by pandas
    ours = FileSource(path).frame()
    theirs = pd.read_csv(path)
    # Then the same values are null, and the numeric column is numeric
    assert ours.isna().to_numpy().tolist() == theirs.isna().to_numpy().tolist()
    assert pd.api.types.is_numeric_dtype(ours["mass"])
    assert ours["mass"].dropna().astype(int).tolist() == [3750, 4100]


def test_configured_null_values_replace_the_default_markers(tmp_path: Path) -> None:
    # Given a CSV whose missing values are written "-" and whose "NA" is a real code
    path = _write(tmp_path, "codes.csv", "id,code,mass\n1,NA,-\n2,-,3\n3,CA,4\n")
    # When it is read with null_values=["-"]
    frame = FileSource(path, null_values=["-"]).frame()
    # Then "-" is null in every column and "NA" is kept as text
    assert frame["code"].tolist()[0] == "NA" and pd.isna(frame["code"].tolist()[1])
    assert pd.isna(frame["mass"].tolist()[0]) and frame["mass"].tolist()[1:] == [3, 4]


def test_no_null_values_keep_every_text_as_it_is(tmp_path: Path) -> None:
    # Given a CSV with "NA" and "" in a text column
    path = _write(tmp_path, "codes.csv", "id,code\n1,NA\n2,\n3,x\n")
    # When it is read with null_values=[]
    frame = FileSource(path, null_values=[]).frame()
    # Then nothing is null
    assert frame["code"].tolist() == ["NA", "", "x"]


PENGUINS = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import HashShards
from stages import ParseNumber

HERE = Path(__file__).parent

penguins = Pipeline(name="penguins", source=FileSource(str(HERE / "penguins.csv"){options}),
                    stages=[ParseNumber("mass", thousands=",", dtype="Int64")],
                    sink=ParquetSink(str(HERE / "out")), key=["id"],
                    shards=HashShards(["id"], 2), batch_size=100)
'''


def test_na_and_empty_in_a_numeric_column_reach_parse_number_as_nulls(tmp_path: Path) -> None:
    # Given a messy CSV whose mass column holds "NA", "" and a quoted "4,100" (so it is read
    # as text), and a pipeline that parses mass as Int64
    _write(tmp_path, "penguins.csv",
           'id,species,mass\n1,Adelie,3750\n2,Adelie,NA\n3,Gentoo,\n4,Gentoo,"4,100"\n')
    (tmp_path / "pipes.py").write_text(PENGUINS.format(options=""))
    # When it is run
    result = etl(tmp_path, "run", "-p", "pipes:penguins", "--no-progress", "--processes", "1")
    # Then every row is loaded: the null markers are nulls, not values that fail to parse
    assert result.returncode == 0, result.stderr
    totals = json.loads(etl(tmp_path, "status", "--json").stdout)["totals"]
    assert (totals["rows_loaded"], totals["rows_quarantined"]) == (4, 0)
    loaded = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out").glob("*.parquet"))
    masses = dict(zip(loaded["id"].astype(int), loaded["mass"]))
    assert masses[1] == 3750 and masses[4] == 4100 and pd.isna(masses[2]) and pd.isna(masses[3])


# -- delimiter, quotechar, encoding ----------------------------------------------------------


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_the_delimiter_splits_fields(tmp_path: Path, delimiter: str) -> None:
    # Given a file separated by `delimiter`, with commas inside values
    path = _write(tmp_path, "rows.csv", f"id{delimiter}name\n1{delimiter}a, b\n2{delimiter}c\n")
    # When it is read with that delimiter
    frame = FileSource(path, delimiter=delimiter).frame()
    # Then each line is one row of two fields
    assert frame.to_dict("list") == {"id": [1, 2], "name": ["a, b", "c"]}


def test_the_quotechar_quotes_values_holding_the_delimiter(tmp_path: Path) -> None:
    # Given a CSV that quotes with '
    path = _write(tmp_path, "rows.csv", "id,name\n1,'Smith, J'\n2,'O''Neil'\n")
    # When it is read with quotechar="'"
    frame = FileSource(path, quotechar="'").frame()
    # Then the quoted values are whole, a doubled quote is one quote
    assert frame["name"].tolist() == ["Smith, J", "O'Neil"]


def test_no_quotechar_keeps_quotes_as_text(tmp_path: Path) -> None:
    # Given a tab-separated file whose values hold unbalanced double quotes
    path = _write(tmp_path, "rows.tsv", 'id\tsize\n1\t12" pipe\n2\t"big\n')
    # When it is read with quotechar=None
    frame = FileSource(path, delimiter="\t", quotechar=None).frame()
    # Then the quotes are part of the values and no line is lost
    assert frame["size"].tolist() == ['12" pipe', '"big']


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_the_encoding_decodes_csv_text(tmp_path: Path, encoding: str) -> None:
    # Given a CSV written in `encoding`
    path = _write(tmp_path, "rows.csv", "id,name\n1,café\n2,naïve\n", encoding)
    # When it is read with that encoding
    frame = FileSource(path, encoding=encoding).frame()
    # Then the text is right and no line is an error
    assert frame.to_dict("list") == {"id": [1, 2], "name": ["café", "naïve"]}


def test_a_line_that_is_not_text_in_the_encoding_is_an_error_row_naming_it(tmp_path: Path) -> None:
    # Given a latin-1 CSV read as UTF-8 (the default)
    path = _write(tmp_path, "rows.csv", "id,name\n1,café\n2,plain\n", "latin-1")
    # When it is read
    frame = FileSource(path).frame()
    # Then the line is an error row and the others load
    assert _good(frame)["name"].tolist() == ["plain"]
    assert frame[SOURCE_ERROR_COLUMN].dropna().str.startswith("line 2: not UTF-8 text").all()


def test_the_encoding_decodes_json_lines(tmp_path: Path) -> None:
    # Given JSON lines written in latin-1
    path = _write(tmp_path, "rows.jsonl", '{"id": 1, "name": "café"}\n', "latin-1")
    # When they are read with encoding="latin-1"
    frame = FileSource(path, encoding="latin-1").frame()
    # Then the text is right
    assert frame["name"].tolist() == ["café"]


# -- header, column_names, skip_rows -----------------------------------------------------------


def test_header_false_reads_the_first_line_as_data_under_the_given_names(tmp_path: Path) -> None:
    path = _write(tmp_path, "rows.csv", "1,a\n2,b\n")
    frame = FileSource(path, header=False, column_names=["id", "name"]).frame()
    assert frame.to_dict("list") == {"id": [1, 2], "name": ["a", "b"]}


def test_header_false_without_names_names_columns_as_pyarrow_does(tmp_path: Path) -> None:
    path = _write(tmp_path, "rows.csv", "1,a\n2,b\n")
    frame = FileSource(path, header=False).frame()
    assert frame.to_dict("list") == {"f0": [1, 2], "f1": ["a", "b"]}


def test_column_names_replace_the_files_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "rows.csv", "Order ID,Name\n1,a\n")
    frame = FileSource(path, column_names=["order_id", "name"]).frame()
    assert frame.to_dict("list") == {"order_id": [1], "name": ["a"]}


def test_skip_rows_skips_lines_before_the_header_and_line_numbers_stay_the_files(
        tmp_path: Path) -> None:
    # Given a report with two title lines before its header, and a broken line 6
    path = _write(tmp_path, "report.csv",
                  "Sales report\nexported 2026-12-05\nid,amount\n1,5\n2,6\n3,7,extra\n")
    # When it is read with skip_rows=2
    frame = FileSource(path, skip_rows=2).frame()
    # Then the header is the third line, and the broken line is named by its line in the file
    assert _good(frame)["amount"].astype(int).tolist() == [5, 6]
    assert frame[SOURCE_ERROR_COLUMN].dropna().tolist() == ["line 6: expected 2 fields, got 3: 3,7,extra"]
    assert frame[SOURCE_LINE_COLUMN].dropna().astype(int).tolist() == [6]


# -- column_types ------------------------------------------------------------------------------


def test_column_types_give_columns_their_types(tmp_path: Path) -> None:
    # Given codes with leading zeros, whole amounts, and flags
    path = _write(tmp_path, "rows.csv", "code,amount,flag\n007,1,true\n010,2,false\n")
    # When they are read with column_types
    table = FileSource(path, column_types={"code": "string", "amount": "float64",
                                           "flag": pa.bool_()}).table()
    # Then each column has its type, and the codes keep their zeros
    assert table.schema.field("code").type == pa.string()
    assert table.schema.field("amount").type == pa.float64()
    assert table.schema.field("flag").type == pa.bool_()
    assert table.column("code").to_pylist() == ["007", "010"]


def test_a_value_not_of_its_column_type_costs_its_line_only(tmp_path: Path) -> None:
    # Given 1,000 lines, line 501 with an amount that is not an int64
    lines = ["id,amount"] + [f"{i},{i}" for i in range(1_000)]
    lines[500] = "499,4.99"
    path = _write(tmp_path, "rows.csv", "\n".join(lines) + "\n")
    # When it is read with column_types={"amount": "int64"}
    frame = FileSource(path, column_types={"amount": "int64"}).frame()
    # Then that line is an error row naming the column, value and type; the rest are int64
    good = _good(frame)
    assert len(good) == 999 and 499 not in set(good["id"].astype(int))
    assert frame[SOURCE_ERROR_COLUMN].dropna().tolist() == [
        "line 501: column 'amount': '4.99' is not int64: 499,4.99"]


def test_column_types_naming_a_column_the_file_lacks_is_one_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "rows.csv", "id,amount\n1,2\n")
    with pytest.raises(SourceError, match=r"column_types names column\(s\) 'amout' not in .*"
                                          r"columns are: id, amount"):
        FileSource(path, column_types={"amout": "int64"}).table()


# -- mixed_types -------------------------------------------------------------------------------


@pytest.mark.parametrize("mixed_types, expected", [
    ("text", ["1.5", "2", None, "true"]),
    ("json", ["1.5", '"2"', None, "true"]),
])
def test_a_json_field_of_mixed_kinds_arrives_as_text(tmp_path: Path, mixed_types: str,
                                                     expected: list) -> None:
    # Given JSON lines whose amount is a number, a string, missing and a boolean
    path = _write(tmp_path, "rows.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": 1, "amount": 1.5}, {"id": 2, "amount": "2"}, {"id": 3}, {"id": 4, "amount": True}]))
    # When they are read
    frame = FileSource(path, mixed_types=mixed_types).frame()
    # Then every line is a row, and amount is text for the stages to parse
    assert SOURCE_ERROR_COLUMN not in frame.columns
    assert [None if pd.isna(v) else v for v in frame["amount"]] == expected


# -- identity: describe and fingerprint ----------------------------------------------------------


def test_options_that_change_the_table_change_the_fingerprint_and_the_description(
        tmp_path: Path) -> None:
    # Given one file
    path = _write(tmp_path, "rows.csv", "id;amount\n1;NA\n")
    plain = FileSource(path)
    # When it is described with other options
    changed = [FileSource(path, delimiter=";"), FileSource(path, null_values=["-"]),
               FileSource(path, quotechar="'"), FileSource(path, skip_rows=1),
               FileSource(path, encoding="latin-1"), FileSource(path, header=False),
               FileSource(path, column_names=["a"]), FileSource(path, column_types={"id": "int64"})]
    # Then each has a fingerprint of its own and names its options; the defaults name none
    prints = {plain.fingerprint(), *(source.fingerprint() for source in changed)}
    assert len(prints) == 1 + len(changed)
    assert FileSource(path, delimiter=",").fingerprint() == plain.fingerprint()
    assert plain.describe() == f"csv file {path}"
    assert FileSource(path, delimiter=";", null_values=["-"]).describe() == \
        f"csv file {path} (delimiter ';', null_values ['-'])"
    # And so do the JSON-lines options
    feed = _write(tmp_path, "rows.jsonl", '{"id": 1}\n')
    assert len({FileSource(feed).fingerprint(), FileSource(feed, mixed_types="json").fingerprint(),
                FileSource(feed, encoding="latin-1").fingerprint()}) == 3
    # And a backfill window keeps the options
    windowed = changed[0].windowed(Window("id", "0", "9"))
    assert windowed.options == changed[0].options and "delimiter ';'" in windowed.describe()


def test_a_run_over_changed_source_options_is_a_new_run(tmp_path: Path) -> None:
    # Given a completed run of a pipeline over a CSV
    _write(tmp_path, "penguins.csv", "id,mass\n1,3750\n2,-\n")
    (tmp_path / "pipes.py").write_text(PENGUINS.format(options="").replace(', thousands=","', ""))
    first = etl(tmp_path, "run", "-p", "pipes:penguins", "--no-progress", "--processes", "1")
    assert first.returncode == 0, first.stderr
    status = json.loads(etl(tmp_path, "status", "--json").stdout)
    first_run = status["run"]["run_id"]
    assert status["totals"]["rows_quarantined"] == 1  # "-" is no number to ParseNumber
    # When the source's null_values change and it is run again
    (tmp_path / "pipes.py").write_text(
        PENGUINS.format(options=', null_values=["-"]').replace(', thousands=","', ""))
    second = etl(tmp_path, "run", "-p", "pipes:penguins", "--no-progress", "--processes", "1")
    # Then a new run reads the source with the new options: nothing is quarantined
    assert second.returncode == 0, second.stderr
    status = json.loads(etl(tmp_path, "status", "--json").stdout)
    assert status["run"]["run_id"] != first_run
    assert (status["totals"]["rows_loaded"], status["totals"]["rows_quarantined"]) == (2, 0)


# -- mistakes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("options, named", [
    ("delimiter=';;'", "delimiter"),
    ("null_values='NA'", "null_values"),
    ("skip_rows=-1", "skip_rows"),
    ("encoding='klingon'", "encoding"),
    ("column_types={'mass': 'integer'}", "column_types['mass']"),
    ("header='yes'", "header"),
    ("quotechar=','", "quotechar"),
])
def test_a_bad_option_value_is_a_config_error_naming_it(tmp_path: Path, options: str,
                                                        named: str) -> None:
    path = _write(tmp_path, "rows.csv", "id,mass\n1,2\n")
    with pytest.raises(ConfigError, match=rf"^FileSource: {named.replace('[', '.').replace(']', '.')} "):
        eval(f"FileSource(path, {options})")  # noqa: S307 - the options as a user writes them


def test_a_csv_option_on_json_lines_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "rows.jsonl", '{"id": 1}\n')
    with pytest.raises(ConfigError, match="^FileSource: null_values applies to CSV files only"):
        FileSource(path, null_values=["-"])
    with pytest.raises(ConfigError, match="^FileSource: mixed_types applies to JSON lines only"):
        FileSource(_write(tmp_path, "rows.csv", "id\n1\n"), mixed_types="json")


@pytest.mark.parametrize("options, named", [("skip_rows=-1", "skip_rows"),
                                            ("null_values='NA'", "null_values")])
def test_a_bad_option_value_is_one_line_and_exit_status_2(tmp_path: Path, options: str,
                                                          named: str) -> None:
    # Given a pipeline module whose FileSource has a bad option value
    _write(tmp_path, "penguins.csv", "id,mass\n1,3750\n")
    (tmp_path / "pipes.py").write_text(textwrap.dedent(PENGUINS.format(options=", " + options)))
    # When it is run
    result = etl(tmp_path, "run", "-p", "pipes:penguins", "--no-progress")
    # Then it exits 2 with one line on stderr naming the option, and no traceback
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"FileSource: {named} " in lines[0] and "Traceback" not in result.stderr
