"""A run and its shard plan: created in two writes, never taken for complete without its
shards, whatever moment a crash picks."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pandas as pd

from etl.core.statuses import RunStatus
from etl.runtime.runs import all_loaded, open_run
from etl.stores.state import Checkpoint, RunRecord, open_state
from tests.test_cli import _orders, _user_pipeline, etl


def _counts(workdir: Path) -> tuple[int, int]:
    """(runs, checkpoints) in the project's state store."""
    with sqlite3.connect(workdir / ".etl" / "state.db") as conn:
        return (conn.execute("SELECT COUNT(*) FROM EtlRun").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM TaskCheckpoint").fetchone()[0])


def test_a_kill_between_the_run_record_and_its_checkpoints_loses_nothing(tmp_path: Path) -> None:
    # Given a user's pipeline over 200 orders in 3 shards
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    # When `etl run` is SIGKILLed right after the run record is created, before its shards
    killed = etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress",
                 env={"ETL_CRASH_AT": "run.after_create:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _counts(tmp_path) == (1, 0)  # the run exists, with no shard recorded
    # And the same command runs again
    resumed = etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress")
    # Then it resumes that run, restores its 3 shards and loads every order once
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run" in resumed.stderr and "completed" in resumed.stdout
    assert _counts(tmp_path) == (1, 3)
    loaded = pd.read_parquet(tmp_path / "out" / "orders")
    assert sorted(loaded["order_id"]) == list(range(200))
    # And a third run has nothing left to load
    again = etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress")
    assert again.returncode == 0 and "nothing to load" in again.stderr


def test_a_run_with_missing_shards_is_never_complete() -> None:
    # Given the checkpoints of a 3-shard plan, all loaded, but one of them missing
    done = [Checkpoint(run_id="r", shard=s, fetch_done=True, status="done") for s in (0, 1)]
    # When completeness is judged, then a missing shard (or none at all) is not complete
    assert not all_loaded([], 3)
    assert not all_loaded(done, 3)


def test_a_run_taken_for_complete_on_no_shards_is_repaired_on_resume(tmp_path: Path) -> None:
    # Given a run recorded as completed with none of its 2 shards (damage left by the old
    # code: a crash before the checkpoints, then a resume that counted all([]) as done)
    from etl import FileSource, ParquetSink, Pipeline
    from shards import RangeShards

    (tmp_path / "rows.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    pipeline = Pipeline(name="p", source=FileSource(str(tmp_path / "rows.csv")),
                        sink=ParquetSink(str(tmp_path / "out")), key=["id"],
                        shards=RangeShards("id", 2), batch_size=5)
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    run, created = open_run(state, pipeline, spec="x:y")
    assert created
    state.create_run(RunRecord(run_id="broken", pipeline="p", plan=run.plan, shards=2,
                               status=RunStatus.COMPLETED, params=run.params))
    # When that run is opened again by id
    reopened, created = open_run(state, pipeline, spec="x:y", run_id="broken")
    # Then its plan is restored and it is running again, not complete
    assert not created and reopened.status == RunStatus.RUNNING
    assert [c.shard for c in state.list_checkpoints("broken")] == [0, 1]


def test_a_pipeline_without_a_batch_size_gets_one_from_the_source_size(tmp_path: Path) -> None:
    # Given a 30,000-row file and a pipeline that sets no batch size, split in 2 and in 8
    import dataclasses

    from etl.pipeline import AUTO_BATCH_ROWS, Pipeline, auto_batch_size
    from etl.sinks.parquet import ParquetSink
    from etl.sources.files import FileSource
    from shards import HashShards

    source = tmp_path / "ids.csv"
    source.write_text("id\n" + "".join(f"{i}\n" for i in range(30_000)))
    base = Pipeline(name="ids", source=FileSource(str(source)), sink=ParquetSink(str(tmp_path / "o")),
                    key=["id"], shards=HashShards(["id"], 2))
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    # When runs are created
    halves, _ = open_run(state, base, spec="ids", fresh=True)
    eighths, _ = open_run(state, base.with_shards(8), spec="ids", fresh=True)
    explicit, _ = open_run(state, dataclasses.replace(base, batch_size=123), spec="ids", fresh=True)
    # Then each records a shard's rows per batch and half again (shards differ in size),
    # within the bounds; a size the pipeline sets is kept
    assert halves.params["batch_size"] == 22_500
    assert eighths.params["batch_size"] == AUTO_BATCH_ROWS[0]  # 5,625 is below the floor
    assert explicit.params["batch_size"] == 123
    assert auto_batch_size(10_000_000, 4) == AUTO_BATCH_ROWS[1]
    assert auto_batch_size(None, 4) == 50_000
