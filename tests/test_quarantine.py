"""Quarantine: listing rejected rows, and replaying them after a fix exactly once, also when
the replay is killed with SIGKILL half-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PIPELINES = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import HashShards
from stages import Dedupe, DropRows

HERE = Path(__file__).parent


def _pipeline(stages):
    return Pipeline(name="amounts", source=FileSource(str(HERE / "amounts.csv")), stages=stages,
                    sink=ParquetSink(str(HERE / "out")), key=["id"],
                    shards=HashShards(["id"], 8), batch_size=5000)  # Dedupe works per batch


strict = _pipeline([DropRows("amount < 0", reason="negative amount"), Dedupe(key=["id"])])
# the fix: refunds (negative amounts) are valid after all
fixed = _pipeline([Dedupe(key=["id"])])
'''

ROWS, NEGATIVE, DUPLICATES = 6_000, 700, 300


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    ids = np.arange(ROWS)
    amounts = rng.uniform(1, 100, ROWS).round(2)
    amounts[rng.choice(ROWS, NEGATIVE, replace=False)] *= -1
    frame = pd.DataFrame({"id": ids, "amount": amounts})
    dupes = frame[frame["amount"] > 0].sample(DUPLICATES, random_state=1)  # positive: one reason each
    pd.concat([frame, dupes]).sample(frac=1, random_state=2).to_csv(tmp_path / "amounts.csv", index=False)
    (tmp_path / "amounts.py").write_text(PIPELINES)
    return tmp_path


def _etl(workdir: Path, *args: str, crash_at: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), os.getcwd()])
    if crash_at:
        env["ETL_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=env,
                          text=True, capture_output=True, timeout=300)


def _sink(workdir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((workdir / "out").glob("*.parquet"))],
                     ignore_index=True)


def _first_run(workdir: Path) -> str:
    done = _etl(workdir, "run", "-p", "amounts:strict", "--no-progress", "--processes", "1")
    assert done.returncode == 0, done.stderr
    return done.stdout.split("run ", 1)[1].split(":", 1)[0].strip()


def test_quarantine_list_counts_rows_by_stage_and_reason(workdir: Path) -> None:
    # Given a run that rejected negative amounts and duplicate ids
    run_id = _first_run(workdir)
    # When its quarantine is listed
    listed = _etl(workdir, "quarantine", "list", run_id, "--limit", "5")
    # Then each reason is counted, with the rejected rows shown
    assert listed.returncode == 0, listed.stderr
    assert "negative amount" in listed.stdout and f"{NEGATIVE:,}" in listed.stdout
    assert "duplicate" in listed.stdout and f"{DUPLICATES:,}" in listed.stdout
    # And --json gives whole rows, each with the raw row it came from, as one JSON array
    rows = json.loads(_etl(workdir, "quarantine", "list", run_id, "--stage", "drop_rows",
                           "--json", "--limit", "1000").stdout)
    assert len(rows) == NEGATIVE and all(float(r["amount"]) < 0 and r["_row"] is not None for r in rows)
    # And an unknown run is a clear error
    missing = _etl(workdir, "quarantine", "list", "nope")
    assert missing.returncode == 2 and "run 'nope' not found" in missing.stderr


def test_replay_after_the_fix_loads_the_rejected_rows_exactly_once(workdir: Path) -> None:
    # Given a finished run without its negative amounts
    run_id = _first_run(workdir)
    assert len(_sink(workdir)) == ROWS - NEGATIVE
    # When its quarantine is replayed with the fixed pipeline, killed half-way the first time
    killed = _etl(workdir, "quarantine", "replay", run_id, "-p", "amounts:fixed",
                  crash_at="replay.after_sink:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = _etl(workdir, "quarantine", "replay", run_id, "-p", "amounts:fixed")
    assert again.returncode == 0, again.stderr
    assert f"{run_id}-replay1" in again.stdout
    # Then every id is in the sink exactly once: the refunds added, the duplicates not
    sink = _sink(workdir)
    assert len(sink) == ROWS and not sink["id"].duplicated().any()
    assert (sink["amount"] < 0).sum() == NEGATIVE
    # When replayed once more
    third = _etl(workdir, "quarantine", "replay", run_id, "-p", "amounts:fixed")
    # Then a second generation finds nothing new to load
    assert third.returncode == 0, third.stderr
    assert f"{run_id}-replay2" in third.stdout
    assert len(_sink(workdir)) == ROWS
    status = json.loads(_etl(workdir, "status", f"{run_id}-replay1", "--json").stdout)
    assert status["totals"]["rows_loaded"] == NEGATIVE
