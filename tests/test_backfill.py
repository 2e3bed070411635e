"""Backfills: a window of the source, a run id derived from it, and triggers that overlap.

Cron may fire the same window twice, or two schedulers may: the run id is the same, so the
second trigger resumes or no-ops, and two at once never load a row twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from bench.pandas_baseline import KEY, clean_flights, flights_csv
from etl.core.errors import ConfigError, SourceError
from etl.core.names import backfill_run_id
from etl.sources.windows import Window
from tests.flights import assert_exactly_once, sink_frame

START, END = "2013-02-01", "2013-05-01"


def _etl(workdir: Path, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["ETL_DEMO_OUTPUT"] = str(workdir / "out" / "flights")
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=workdir, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _window_reference() -> pd.DataFrame:
    raw = pd.read_csv(flights_csv())
    hour = pd.to_datetime(raw["time_hour"], utc=True)
    inside = (hour >= pd.Timestamp(START, tz="UTC")) & (hour < pd.Timestamp(END, tz="UTC"))
    return clean_flights(raw.loc[inside].reset_index(drop=True))


# -- windows ----------------------------------------------------------------------------------
def test_window_keeps_exactly_the_half_open_interval_for_each_column_type() -> None:
    # Given a table with a UTC timestamp, a date, a number and a string column, and a null
    table = pa.table({
        "at": pa.array([pd.Timestamp("2013-01-31 23:59:59", tz="UTC"), pd.Timestamp("2013-02-01", tz="UTC"),
                        pd.Timestamp("2013-02-28 23:00", tz="UTC"), pd.Timestamp("2013-03-01", tz="UTC"), None],
                       type=pa.timestamp("s", tz="UTC")),
        "day": pa.array([pd.Timestamp(d).date() if d else None for d in
                         ["2013-01-31", "2013-02-01", "2013-02-28", "2013-03-01", None]], type=pa.date32()),
        "n": [9, 10, 15, 20, None],
        "s": ["a", "b", "c", "d", None],
    })
    # When windowed on each, Then only start <= value < end is kept, nulls never
    assert Window("at", "2013-02-01", "2013-03-01").apply(table).num_rows == 2
    assert Window("day", "2013-02-01", "2013-03-01").apply(table).num_rows == 2
    assert Window("n", "10", "20").apply(table).column("n").to_pylist() == [10, 15]
    assert Window("s", "b", "d").apply(table).column("s").to_pylist() == ["b", "c"]


def test_window_mistakes_are_clear_errors() -> None:
    table = pa.table({"n": [1, 2]})
    with pytest.raises(SourceError, match="window column missing is not in the source"):
        Window("missing", "1", "2").apply(table)
    with pytest.raises(ConfigError, match="does not fit column n"):
        Window("n", "2013-01-01", "2013-02-01").apply(table)
    with pytest.raises(ConfigError, match="window is empty"):
        Window("n", "5", "5").validate()
    with pytest.raises(ConfigError, match="not of one kind"):
        Window("n", "5", "2013-01-01").validate()


def test_backfill_run_id_is_stable_and_differs_per_window_and_plan() -> None:
    window = Window("time_hour", START, END)
    first = backfill_run_id("flights", "hash(carrier)/20", window)
    # Then the same inputs give the same id, on any machine (golden value)
    assert first == backfill_run_id("flights", "hash(carrier)/20", Window("time_hour", START, END))
    assert first == "flights-20130201-20130501-" + first.rsplit("-", 1)[1]
    assert backfill_run_id("flights", "hash(carrier)/20", Window("time_hour", START, "2013-05-02")) != first
    assert backfill_run_id("flights", "hash(carrier)/8", window) != first


# -- triggers -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_backfills_of_one_window_load_it_exactly_once(tmp_path: Path) -> None:
    # Given two triggers of the same window started at the same moment, in embedded mode
    args = ("backfill", "--start", START, "--end", END, "--shards", "8", "--batch-size", "3000",
            "--no-progress")
    first, second = _etl(tmp_path, *args), _etl(tmp_path, *args)
    # When both run to their end
    outs = [p.communicate(timeout=300) for p in (first, second)]
    # Then both succeed on the same run
    assert (first.returncode, second.returncode) == (0, 0), outs
    run_ids = {found for out, err in outs for found in re.findall(r"flights-2013\w*-\w*-\w*", out + err)}
    assert len(run_ids) == 1, outs
    # And the sink holds the window's rows exactly once, as plain pandas computes them
    reference = _window_reference()
    sink = sink_frame(tmp_path)
    assert_exactly_once(sink, reference)
    assert sink["sched_dep"].min() >= pd.Timestamp("2013-01-31", tz="UTC")
    # When the window is triggered once more (cron firing again)
    again = _etl(tmp_path, *args)
    out, err = again.communicate(timeout=300)
    # Then it finds the run complete and loads nothing
    assert again.returncode == 0, err
    assert "already complete" in err
    assert_exactly_once(sink_frame(tmp_path), reference)


@pytest.mark.slow
def test_a_backfill_adds_its_window_without_replacing_the_others(tmp_path: Path) -> None:
    # Given February loaded by one backfill
    for start, end in (("2013-02-01", "2013-03-01"), ("2013-03-01", "2013-04-01")):
        # When the next window is backfilled
        process = _etl(tmp_path, "backfill", "--start", start, "--end", end, "--shards", "4",
                       "--no-progress")
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    # Then the dataset holds both months, each flight once
    sink = sink_frame(tmp_path)
    months = pd.to_datetime(sink["time_hour"], utc=True).dt.month
    assert set(months) == {2, 3}
    assert not sink.duplicated(KEY).any()
