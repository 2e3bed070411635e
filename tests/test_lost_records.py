"""Step records lost with a killed `etl run`: the resumed run's completion writes them from
the state store, once, so every step of a completed run has exactly one record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from etl.core.names import task_fingerprint
from etl.runtime.run_record import LOST_NOTE, record_lost_steps
from etl.stores.state import open_state
from etl.stores.state.base import RawPayload
from results import ResultStore, open_results
from results.changes import NewRecord
from results.models import JobResult, Transition, utcnow
from tests.test_results_conformance import store  # noqa: F401 - the fixture, over every backend


def _done(state, run_id: str, batches: int) -> None:  # type: ignore[no-untyped-def]
    """`batches` batches of shard 0 fetched, cleaned and loaded, as the state store counts."""
    state.init_checkpoints(run_id, 1)
    for batch in range(batches):
        state.record_fetch(RawPayload(run_id=run_id, shard=0, batch=batch, key=f"k{batch}",
                                      bytes=1, sha256="x", rows=10, cursor_start=batch,
                                      cursor_end=batch + 1), exhausted=batch == batches - 1,
                           ledger=True)
        for stage, rows in (("clean", {"rows_cleaned": 10}), ("load", {"rows_loaded": 10})):
            state.complete_stage(run_id, 0, batch, stage, rows)


def test_steps_done_without_a_record_get_one_and_only_once(
        store: ResultStore, tmp_path: Path) -> None:  # noqa: F811
    # Given a run of three batches done in the state store, whose records hold only the
    # first batch's steps (the others' were lost with a killed process)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    _done(state, run_id, 3)
    now = utcnow()
    kept = {stage: uuid.uuid4().hex for stage in ("fetch", "clean", "load")}
    store.write_many([NewRecord(JobResult(
        job_id=job_id, function=f"etl_{stage}", status="completed", queue="etl", run_id=run_id,
        args=[run_id, 0, 0], stage=stage, created_at=now,
        history=[Transition("completed", now)])) for stage, job_id in kept.items()])
    # When the resumed run's completion writes what was lost, twice
    assert record_lost_steps(store, state, run_id) == 6
    assert record_lost_steps(store, state, run_id) == 0
    # Then each step of each batch has exactly one record, completed; the written ones say why
    jobs = store.list(run_id=run_id, limit=100)
    steps = Counter((job.function, job.args[2]) for job in jobs)
    assert steps == Counter({(f"etl_{s}", b): 1 for s in ("fetch", "clean", "load") for b in range(3)})
    assert all(job.status == "completed" for job in jobs)
    written = [job for job in jobs if job.job_id not in kept.values()]
    assert len(written) == 6 and all(job.history[-1].note == LOST_NOTE for job in written)
    assert all(job.args == [run_id, 0, job.args[2]] and job.stage == job.function[4:] for job in written)
    state.close()


def test_a_step_not_done_gets_no_record(store: ResultStore, tmp_path: Path) -> None:  # noqa: F811
    # Given a batch fetched but not cleaned (a run that did not complete, say)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    state.init_checkpoints(run_id, 1)
    state.record_fetch(RawPayload(run_id=run_id, shard=0, batch=0, key="k", bytes=1, sha256="x",
                                  rows=10, cursor_start=0, cursor_end=1), exhausted=True,
                       ledger=True)
    assert not state.is_done(task_fingerprint("clean", run_id, 0, 0))
    # When lost records are written, Then only the fetch, which is done, gets one
    assert record_lost_steps(store, state, run_id) == 1
    assert [job.function for job in store.list(run_id=run_id)] == ["etl_fetch"]
    state.close()


PIPELINE = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import HashShards

HERE = Path(__file__).parent

pipeline = Pipeline(name="records", source=FileSource(str(HERE / "rows.csv")),
                    sink=ParquetSink(str(HERE / "out")), key=["id"],
                    shards=HashShards(["id"], 4), batch_size=150)
'''


def test_a_run_killed_mid_way_then_resumed_has_one_record_per_step(tmp_path: Path) -> None:
    # Given a run of ~60 small batches, killed by SIGKILL after its 30th load is counted
    # (its processes had records of the last steps in their writers' batches)
    pd.DataFrame({"id": np.arange(9000), "v": np.arange(9000) % 13}).to_csv(tmp_path / "rows.csv",
                                                                            index=False)
    (tmp_path / "records.py").write_text(PIPELINE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd()])
    # (one thread: the step the kill lands in is the only one in hand, and it is counted)
    command = [sys.executable, "-m", "cli.main", "run", "-p", "records:pipeline", "--no-progress",
               "--processes", "1", "--threads", "1"]
    killed = subprocess.run(command, cwd=tmp_path, env={**env, "ETL_CRASH_AT": "load.after_count:30"},
                            text=True, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # When it is run again to its end
    done = subprocess.run(command, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run ", 1)[1].split(":", 1)[0].strip()
    # Then every step of every batch has exactly one record, completed
    state = open_state(f"sqlite:///{tmp_path}/.etl/state.db")
    results = open_results(f"sqlite:///{tmp_path}/.etl/results.db")
    try:
        batches = [(p.shard, p.batch) for p in state.list_payloads(run_id)]
        jobs = [job for job in results.list(run_id=run_id, limit=10_000) if job.job_id != run_id]
        steps = Counter((job.function, job.args[1], job.args[2]) for job in jobs)
        assert len(batches) > 40
        assert steps == Counter({(f"etl_{s}", shard, batch): 1 for s in ("fetch", "clean", "load")
                                 for shard, batch in batches})
        assert all(job.status == "completed" for job in jobs)
    finally:
        state.close()
        results.close()
