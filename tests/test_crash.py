"""Exactly once under crash: real `etl run` processes killed with SIGKILL, then resumed.

The demo pipeline (NYC flights 2013, 336,776 rows) runs with 20 shards and small batches so
each shard has several. Processes die at the hardest moments (between the writes of a batch
step, via ETL_CRASH_AT) and at moments picked by watching the state store from outside. After
each kill the same command runs again; once one finishes, the sink must hold every key of the
plain-pandas reference exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.flights import assert_exactly_once, sink_frame
from tests.watch import rows_loaded

pytestmark = pytest.mark.slow

COMMAND = [sys.executable, "-m", "cli.main", "run", "--shards", "20", "--batch-size", "6000",
           "--no-progress"]
#: Crash points kill the process that passes them: run single-process so that is `etl run`.
ONE_PROCESS = ["--processes", "1", "--threads", "3"]


def _env(workdir: Path, crash_at: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["ETL_DEMO_OUTPUT"] = str(workdir / "out" / "flights")
    if crash_at:
        env["ETL_CRASH_AT"] = crash_at
    return env


def _run(workdir: Path, crash_at: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(COMMAND + (ONE_PROCESS if crash_at else []), cwd=workdir, env=_env(workdir, crash_at), text=True,
                          capture_output=True, timeout=timeout)


def _kill_when(workdir: Path, predicate, *, give_up: float = 120) -> int:  # type: ignore[no-untyped-def]
    """Start the command, SIGKILL it once `predicate(rows_loaded)` holds; its return code."""
    process = subprocess.Popen(COMMAND, cwd=workdir, env=_env(workdir), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + give_up
    while process.poll() is None and time.monotonic() < deadline:
        if predicate(rows_loaded(workdir)):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.communicate(timeout=60)
    return process.returncode


def test_sigkill_at_every_crash_point_then_resume_loads_each_row_once(
        tmp_path: Path, reference: pd.DataFrame) -> None:
    # Given a fresh working directory and the demo pipeline
    crashes = ["fetch.after_put:3", "fetch.after_record:9", "clean.after_stage:5",
               "load.after_sink:7", "load.after_count:4"]
    # When the run is killed by SIGKILL at each crash point in turn, resuming each time
    for point in crashes:
        result = _run(tmp_path, crash_at=point)
        assert result.returncode == -signal.SIGKILL, (point, result.stdout, result.stderr)
    # And killed twice more at moments seen from outside, with worker processes: early, then
    # mid-run (the workers die with their parent)
    assert _kill_when(tmp_path, lambda loaded: True) in (-signal.SIGKILL, 0)
    seen = rows_loaded(tmp_path)
    assert _kill_when(tmp_path, lambda loaded: loaded > seen + 40_000) in (-signal.SIGKILL, 0)
    # And the same command then runs to the end
    final = _run(tmp_path)
    assert final.returncode == 0, final.stderr
    assert "completed" in final.stdout
    # Then the sink holds every key of the pandas reference exactly once
    assert_exactly_once(sink_frame(tmp_path), reference)
    # And rows in = rows loaded + rows quarantined
    with sqlite3.connect(tmp_path / ".etl" / "state.db") as conn:
        fetched, loaded, quarantined = conn.execute(
            "SELECT SUM(rows_fetched), SUM(rows_loaded), SUM(rows_quarantined) FROM TaskCheckpoint"
        ).fetchone()
    assert fetched == 336_776
    assert loaded == len(reference)
    assert fetched == loaded + quarantined

    # When the finished run is triggered again
    files_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "flights").iterdir()}
    again = _run(tmp_path)
    # Then it loads nothing: same files, untouched, counts unchanged
    assert again.returncode == 0, again.stderr
    assert "nothing to load" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "flights").iterdir()} == files_before
    assert rows_loaded(tmp_path) == len(reference)
