"""Objects lost after their step was recorded (deleted by hand, a bucket lifecycle rule, a
restore from an older backup): the run resumes by making them again, never wedges. Raw
batches are copies here (raw_landing="copy"); batches landed as pointers into the source
are covered at the end."""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd

from tests.test_cli import _orders, _user_pipeline, etl

RUN = ["run", "-p", "mypipes:orders", "--no-progress", "--processes", "1"]


def _objects(workdir: Path, kind: str) -> list[Path]:
    return sorted((workdir / ".etl" / "objects").glob(f"runs/*/{kind}/**/*.parquet"))


def test_a_lost_raw_payload_is_cut_again_from_its_cursor_range(tmp_path: Path) -> None:
    # Given a run killed after 3 batches were fetched and recorded, before they were cleaned
    _orders(tmp_path)
    _user_pipeline(tmp_path, stages='[Trim(columns=["sku"])]', raw_landing="copy")
    killed = etl(tmp_path, *RUN, env={"ETL_CRASH_AT": "fetch.after_record:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # And every raw payload object of the run deleted
    lost = _objects(tmp_path, "raw")
    assert lost
    for path in lost:
        path.unlink()
    # When the same command runs again
    resumed = etl(tmp_path, *RUN)
    # Then it completes, every order loaded once, and says what it made again
    assert resumed.returncode == 0, resumed.stderr
    assert "completed" in resumed.stdout
    loaded = pd.read_parquet(tmp_path / "out" / "orders")
    assert sorted(loaded["order_id"]) == list(range(200))
    assert "cut again from the source" in resumed.stderr


def test_a_lost_staged_batch_is_cleaned_again_from_its_raw_payload(tmp_path: Path) -> None:
    # Given a run killed after a sink write, before that load was counted
    _orders(tmp_path)
    _user_pipeline(tmp_path, stages='[Trim(columns=["sku"]), Upper(columns=["sku"])]',
                   raw_landing="copy")
    killed = etl(tmp_path, *RUN, env={"ETL_CRASH_AT": "load.after_sink:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # And every staged object and every raw object deleted
    for path in _objects(tmp_path, "staged") + _objects(tmp_path, "raw"):
        path.unlink()
    # When the same command runs again
    resumed = etl(tmp_path, *RUN)
    # Then it completes with every order once, cleaned as the stages say
    assert resumed.returncode == 0, resumed.stderr
    loaded = pd.read_parquet(tmp_path / "out" / "orders")
    assert sorted(loaded["order_id"]) == list(range(200))
    assert set(loaded["sku"]) == {f"SKU{i}" for i in range(7)}


def test_a_lost_raw_payload_of_a_changed_source_is_one_clear_line(tmp_path: Path) -> None:
    # Given a run killed after fetching, its raw objects deleted, and the source edited
    _orders(tmp_path)
    _user_pipeline(tmp_path, raw_landing="copy")
    assert etl(tmp_path, *RUN, env={"ETL_CRASH_AT": "fetch.after_record:2"}).returncode == -signal.SIGKILL
    for path in _objects(tmp_path, "raw"):
        path.unlink()
    _orders(tmp_path, rows=150)
    # When the same command runs again
    again = etl(tmp_path, *RUN)
    # Then it refuses in one line that says what to do, without a traceback
    assert again.returncode == 2, again.stderr
    assert "--fresh" in again.stderr and "Traceback" not in again.stderr


def test_batches_landed_as_pointers_are_cut_again_after_a_crash(tmp_path: Path) -> None:
    # Given a file source, whose batches land as pointers (no raw copy), and a run killed
    # after 3 batches were fetched and recorded, before they were cleaned
    _orders(tmp_path)
    _user_pipeline(tmp_path, stages='[Trim(columns=["sku"]), Upper(columns=["sku"])]')
    killed = etl(tmp_path, *RUN, env={"ETL_CRASH_AT": "fetch.after_record:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not _objects(tmp_path, "raw") and not _objects(tmp_path, "staged")
    # When the same command runs again
    resumed = etl(tmp_path, *RUN)
    # Then the recorded batches are cut again from the file: every order loaded once, cleaned
    assert resumed.returncode == 0, resumed.stderr
    loaded = pd.read_parquet(tmp_path / "out" / "orders")
    assert sorted(loaded["order_id"]) == list(range(200))
    assert set(loaded["sku"]) == {f"SKU{i}" for i in range(7)}


def test_a_pointer_into_a_changed_source_is_one_clear_line(tmp_path: Path) -> None:
    # Given a run killed after fetching batches as pointers, and the source then edited
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    assert etl(tmp_path, *RUN, env={"ETL_CRASH_AT": "fetch.after_record:2"}).returncode == -signal.SIGKILL
    _orders(tmp_path, rows=150)
    # When the same command runs again
    again = etl(tmp_path, *RUN)
    # Then it refuses in one line that says what to do, without a traceback
    assert again.returncode == 2, again.stderr
    assert "--fresh" in again.stderr and "Traceback" not in again.stderr
