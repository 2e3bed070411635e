"""Lossless sources: no fixable row is lost before a stage runs, and a line the source
rejected is recovered by a replay after the source option is fixed.

Each case runs the real `etl` CLI in a subprocess on a project in a temporary folder: a
JSON-lines feed whose `amount` is a number in most lines and a string in some keeps every
row through ParseNumber; a line the source rejected (a JSON field of a rarer kind read with
mixed_types="quarantine", a CSV line with a wrong number of fields, a value that is not of
its column_types type) keeps its raw text in quarantine, and `etl quarantine replay
--stage source` with the fixed pipeline reads that text again with the fixed options and
loads it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from etl.sources.base import SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN

FEED_LINES = 12_151


def etl(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), os.getcwd()])
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=env,
                          text=True, capture_output=True, timeout=300)


def _run(workdir: Path, spec: str) -> tuple[str, dict]:
    """`etl run -p spec`, then the run's id and totals."""
    result = etl(workdir, "run", "-p", spec, "--no-progress", "--processes", "1")
    assert result.returncode == 0, result.stderr
    status = json.loads(etl(workdir, "status", "--json").stdout)
    return status["run"]["run_id"], status["totals"]


def _quarantined(workdir: Path, run_id: str) -> list[dict]:
    listed = etl(workdir, "quarantine", "list", run_id, "--json", "--limit", "100000")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _replay(workdir: Path, run_id: str, spec: str) -> str:
    replayed = etl(workdir, "quarantine", "replay", run_id, "-p", spec, "--stage", "source")
    assert replayed.returncode == 0, replayed.stderr
    return replayed.stdout


def _loaded(workdir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((workdir / "out").glob("*.parquet"))],
                     ignore_index=True)


def _feed(workdir: Path) -> dict[int, float]:
    """A nested JSON-lines feed of FEED_LINES orders where `amount` is a string in every
    17th line (first in line 4) and a number elsewhere; returns id -> amount."""
    rng = random.Random(13)
    amounts: dict[int, float] = {}
    lines = []
    for i in range(FEED_LINES):
        amount = round(rng.uniform(1, 500), 2)
        amounts[i] = amount
        lines.append(json.dumps({
            "id": i, "customer": {"name": f"c{i % 97}", "tier": ["gold", "basic"][i % 2]},
            "items": [{"sku": f"s{i % 13}", "qty": 1 + i % 3}],
            "amount": str(amount) if i % 17 == 3 else amount}))
    (workdir / "feed.jsonl").write_text("\n".join(lines) + "\n")
    return amounts


FEED_PIPELINES = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import HashShards
from stages import ParseNumber

HERE = Path(__file__).parent


def _feed(**options):
    return Pipeline(name="feed", source=FileSource(str(HERE / "feed.jsonl"), **options),
                    stages=[ParseNumber("amount")], sink=ParquetSink(str(HERE / "out")),
                    key=["id"], shards=HashShards(["id"], 4), batch_size=2_000)


feed = _feed()                                   # mixed kinds arrive as text (the default)
strict = _feed(mixed_types="quarantine")         # as before: rarer kinds are error rows
'''


def test_a_json_field_of_mixed_kinds_keeps_every_row_through_parse_number(tmp_path: Path) -> None:
    # Given a 12,151-line nested JSON feed whose amount is a string in 715 lines and a
    # number in the others, and a pipeline that parses amount with ParseNumber
    amounts = _feed(tmp_path)
    (tmp_path / "feeds.py").write_text(FEED_PIPELINES)
    # When it is run
    _, totals = _run(tmp_path, "feeds:feed")
    # Then no line went to quarantine before the stages ran: every row is loaded
    assert (totals["rows_fetched"], totals["rows_loaded"], totals["rows_quarantined"]) == \
        (FEED_LINES, FEED_LINES, 0)
    # And every amount is the number the line held, whether it came as a string or not
    loaded = _loaded(tmp_path)
    assert dict(zip(loaded["id"].astype(int), loaded["amount"].astype(float))) == amounts


def test_json_lines_quarantined_for_their_kind_replay_after_the_option_is_fixed(
        tmp_path: Path) -> None:
    # Given the feed run with mixed_types="quarantine": the 715 lines whose amount is a
    # string are rejected by the source, each kept with its line number and whole text
    amounts = _feed(tmp_path)
    (tmp_path / "feeds.py").write_text(FEED_PIPELINES)
    run_id, totals = _run(tmp_path, "feeds:strict")
    strings = [i for i in range(FEED_LINES) if i % 17 == 3]
    assert (totals["rows_loaded"], totals["rows_quarantined"]) == \
        (FEED_LINES - len(strings), len(strings))
    rows = _quarantined(tmp_path, run_id)
    assert {r["_stage"] for r in rows} == {"source"}
    first = min(rows, key=lambda r: r[SOURCE_LINE_COLUMN])
    assert first[SOURCE_LINE_COLUMN] == 4
    assert first["_reason"] == "line 4: field 'amount' is a string where other lines have a number"
    assert json.loads(first[SOURCE_TEXT_COLUMN])["amount"] == str(amounts[3])
    # When the quarantine is replayed with the fixed pipeline (mixed kinds as text)
    shown = _replay(tmp_path, run_id, "feeds:feed")
    # Then every quarantined line is read again and loaded, and the sink holds every row once
    assert "rows loaded" in shown and f"{len(strings):,}" in shown
    loaded = _loaded(tmp_path)
    assert len(loaded) == FEED_LINES and not loaded["id"].duplicated().any()
    assert dict(zip(loaded["id"].astype(int), loaded["amount"].astype(float))) == amounts
    # And a second replay has nothing left to load
    again = etl(tmp_path, "quarantine", "replay", run_id, "-p", "feeds:feed", "--stage", "source")
    assert again.returncode == 0, again.stderr
    assert len(_loaded(tmp_path)) == FEED_LINES


CSV_PIPELINES = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import HashShards

HERE = Path(__file__).parent


def _orders(**options):
    return Pipeline(name="orders", source=FileSource(str(HERE / "orders.csv"), **options),
                    stages=[], sink=ParquetSink(str(HERE / "out")), key=["id"],
                    shards=HashShards(["id"], 3), batch_size=500)


strict = _orders(column_types={"amount": "int64"})
# the fixes: names are quoted with ', and amounts may have cents
fixed = _orders(quotechar="'", column_types={"amount": "float64"})
'''


def test_csv_lines_the_source_rejected_replay_after_a_fixed_source_option(tmp_path: Path) -> None:
    # Given a CSV whose names are quoted with ' (so a name holding a comma has a field too
    # many under the default quotechar) and whose amount is declared int64 though two lines
    # have cents, and one line that no option fixes
    lines = ["id,name,amount"] + [f"{i},n{i},{i}" for i in range(2_000)]
    lines[11] = "10,'Smith, J',10"
    lines[301] = "300,'Doe, A',300"
    lines[51] = "50,n50,50.5"
    lines[1201] = "1200,n1200,1200.25"
    lines[1501] = "1500,n1500"
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "orders.py").write_text(CSV_PIPELINES)
    run_id, totals = _run(tmp_path, "orders:strict")
    # And the run quarantined those five lines at the source, each with its whole text
    assert (totals["rows_loaded"], totals["rows_quarantined"]) == (1_995, 5)
    rows = {r[SOURCE_LINE_COLUMN]: r for r in _quarantined(tmp_path, run_id)}
    assert sorted(rows) == [12, 52, 302, 1202, 1502]
    assert rows[12]["_reason"] == "line 12: expected 3 fields, got 4: 10,'Smith, J',10"
    assert rows[52]["_reason"] == "line 52: column 'amount': '50.5' is not int64: 50,n50,50.5"
    assert rows[302][SOURCE_TEXT_COLUMN] == "300,'Doe, A',300"
    # When the quarantine is replayed with the pipeline whose source options are fixed
    _replay(tmp_path, run_id, "orders:fixed")
    # Then the four fixable lines are loaded with their values, the fifth is quarantined
    # again with its true line number, and no id is loaded twice
    loaded = _loaded(tmp_path)
    assert sorted(loaded["id"].astype(int)) == [i for i in range(2_000) if i != 1500]
    by_id = loaded.set_index(loaded["id"].astype(int))
    assert by_id.loc[10, "name"] == "Smith, J" and by_id.loc[300, "name"] == "Doe, A"
    assert float(by_id.loc[50, "amount"]) == 50.5 and float(by_id.loc[1200, "amount"]) == 1200.25
    [again] = _quarantined(tmp_path, f"{run_id}-replay1")
    assert again["_stage"] == "source" and again[SOURCE_LINE_COLUMN] == 1502
    assert again["_reason"].startswith("line 1502: expected 3 fields, got 2")


#: The head of a module of orders pipelines over orders.csv (2 hash shards, batches of 100):
#: `_orders(stages, **source options)`; each test adds the pipelines it runs.
STAGED_PIPELINES = textwrap.dedent('''
        from pathlib import Path

        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards
        from stages import DropRows

        HERE = Path(__file__).parent


        def _orders(stages, **options):
            return Pipeline(name="orders", source=FileSource(str(HERE / "orders.csv"), **options),
                            stages=stages, sink=ParquetSink(str(HERE / "out")), key=["id"],
                            shards=HashShards(["id"], 2), batch_size=100)
''')


def test_a_source_line_rejected_by_a_stage_after_its_replay_replays_again(tmp_path: Path) -> None:
    # Given a CSV whose line 3 has a field too many under the default quotechar, a fixed
    # pipeline that reads it but whose stage rejects its negative amount, and a second fix
    lines = ["id,name,amount", "1,a,5", "2,'b, c',-7", "3,d,9"]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "orders.py").write_text(STAGED_PIPELINES + textwrap.dedent('''
        strict = _orders([DropRows("amount < 0", reason="negative")])
        quoted = _orders([DropRows("amount < 0", reason="negative")], quotechar="'")
        refunds = _orders([], quotechar="'")
    '''))
    run_id, _ = _run(tmp_path, "orders:strict")
    _replay(tmp_path, run_id, "orders:quoted")
    [rejected] = _quarantined(tmp_path, f"{run_id}-replay1")
    assert (rejected["_stage"], rejected["_reason"]) == ("drop_rows", "negative")
    # When the second generation is replayed with the stage fixed too (all stages)
    replayed = etl(tmp_path, "quarantine", "replay", run_id, "-p", "orders:refunds")
    # Then the line is read again from its raw text and loaded
    assert replayed.returncode == 0, replayed.stderr
    loaded = _loaded(tmp_path)
    assert sorted(loaded["id"].astype(int)) == [1, 2, 3]
    assert loaded.set_index(loaded["id"].astype(int)).loc[2, "name"] == "b, c"


def test_lines_not_in_the_files_encoding_replay_after_the_encoding_is_fixed(tmp_path: Path) -> None:
    # Given a latin-1 CSV read as UTF-8 (the default): its two accented lines are rejected,
    # their bytes kept backslash-escaped in the quarantined text
    (tmp_path / "orders.csv").write_bytes("id,name\n1,café\n2,plain\n3,naïve\n".encode("latin-1"))
    (tmp_path / "orders.py").write_text(textwrap.dedent('''
        from pathlib import Path

        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards

        HERE = Path(__file__).parent


        def _orders(**options):
            return Pipeline(name="orders", source=FileSource(str(HERE / "orders.csv"), **options),
                            stages=[], sink=ParquetSink(str(HERE / "out")), key=["id"],
                            shards=HashShards(["id"], 2), batch_size=100)


        strict = _orders()
        fixed = _orders(encoding="latin-1")
    '''))
    run_id, totals = _run(tmp_path, "orders:strict")
    assert (totals["rows_loaded"], totals["rows_quarantined"]) == (1, 2)
    assert {r[SOURCE_TEXT_COLUMN] for r in _quarantined(tmp_path, run_id)} == \
        {"1,caf\\xe9", "3,na\\xefve"}
    # When they are replayed with encoding="latin-1"
    _replay(tmp_path, run_id, "orders:fixed")
    # Then the lines are read with the right text and loaded
    loaded = _loaded(tmp_path)
    assert dict(zip(loaded["id"].astype(int), loaded["name"])) == \
        {1: "café", 2: "plain", 3: "naïve"}


def test_source_lines_left_out_of_a_first_replay_are_replayed_by_a_later_one(
        tmp_path: Path) -> None:
    # Given a run that quarantined a line at the source (a field too many) and a row at a
    # stage (negative amount), as the README's quarantine walk-through has it
    lines = ["id,name,amount", "1,a,5", "2,'b, c',7", "3,d,-9", "4,e,4"]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "orders.py").write_text(STAGED_PIPELINES + textwrap.dedent('''
        strict = _orders([DropRows("amount < 0", reason="negative")])
        refunds = _orders([])  # the stage fix
        quoted = _orders([], quotechar="'")  # and the source option fix
    '''))
    run_id, totals = _run(tmp_path, "orders:strict")
    assert (totals["rows_loaded"], totals["rows_quarantined"]) == (2, 2)
    # When the stage fix is replayed first (source lines are not replayed by default)
    first = etl(tmp_path, "quarantine", "replay", run_id, "-p", "orders:refunds")
    assert first.returncode == 0, first.stderr
    assert sorted(_loaded(tmp_path)["id"].astype(int)) == [1, 3, 4]
    # Then the line it left out is still in quarantine, in the first replay's
    [left] = _quarantined(tmp_path, f"{run_id}-replay1")
    assert left["_stage"] == "source" and left[SOURCE_TEXT_COLUMN] == "2,'b, c',7"
    # And when the source lines are replayed next, that line is read again and loaded
    _replay(tmp_path, run_id, "orders:quoted")
    loaded = _loaded(tmp_path)
    assert sorted(loaded["id"].astype(int)) == [1, 2, 3, 4]
    assert loaded.set_index(loaded["id"].astype(int)).loc[2, "name"] == "b, c"
    assert _quarantined(tmp_path, f"{run_id}-replay2") == []
