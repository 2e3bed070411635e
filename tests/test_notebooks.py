"""The checkpoint-inspection notebook, executed headless the way a person runs it, and the
etl.inspect API under it.

A real demo run (`etl run --shards 4`, 336,776 flights in 20 batches) is made once per module
in a temporary directory; the notebook is then run by nbclient on a python3 (ipykernel)
kernel started in that directory, in a subdirectory of it (as Jupyter starts a kernel in
`notebooks/`), and from elsewhere with the ETL_*_URL variables pointing at it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from etl.core.errors import BatchError, ConfigError, EtlError
from etl.inspect import Inspector, PayloadMismatch, find_project_dir, share_done
from etl.core.names import raw_key
from etl.stores.objects import open_objects
from etl.core.parquet import to_parquet_bytes
from etl.stores.state import Checkpoint, ErrorRecord, RawPayload, RunRecord, open_state
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "inspect_checkpoints.ipynb"
SHARDS = 4
BATCH_SIZE = 20_000


def _env(**extra: str) -> dict[str, str]:
    """This environment without any ETL_* setting (a developer's own must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(extra)
    return env


def _etl_command() -> list[str]:
    """The venv's `etl` script next to this interpreter, else the same CLI as a module."""
    script = Path(sys.executable).parent / "etl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    run_id: str

    @property
    def urls(self) -> dict[str, str]:
        return {"ETL_STATE_URL": f"sqlite:///{self.workdir}/.etl/state.db",
                "ETL_OBJECTS_URL": f"file://{self.workdir}/.etl/objects",
                "ETL_RESULTS_URL": f"sqlite:///{self.workdir}/.etl/results.db"}

    def inspector(self) -> Inspector:
        return Inspector.from_settings(self.workdir)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A completed demo run made by the real `etl run` in a directory of its own."""
    workdir = tmp_path_factory.mktemp("demo-run")
    result = subprocess.run(
        [*_etl_command(), "run", "--shards", str(SHARDS), "--batch-size", str(BATCH_SIZE),
         "--no-progress"],
        cwd=workdir, env=_env(PYTHONPATH=str(ROOT)), text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    state = open_state(f"sqlite:///{workdir}/.etl/state.db")
    try:
        runs = state.list_runs()
    finally:
        state.close()
    assert len(runs) == 1 and runs[0].status == "completed"
    return DemoRun(workdir, runs[0].run_id)


def _execute(cwd: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run the committed notebook on a fresh python3 kernel started in `cwd` with `env`;
    a cell that raises fails the test with its traceback (CellExecutionError)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=180,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    return notebook


def _texts(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text or HTML."""
    parts: list[str] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.extend(output.data.get(kind, "") for kind in ("text/plain", "text/html"))
            elif output.output_type == "error":
                parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def _images(notebook: nbformat.NotebookNode) -> list[str]:
    return [output.data["image/png"] for cell in notebook.cells
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def _assert_shows_the_run(notebook: nbformat.NotebookNode, demo: DemoRun) -> str:
    text = _texts(notebook)
    assert f"run {demo.run_id} (flights, hash(carrier,flight,origin)/{SHARDS}): completed" in text
    # the shard table: its columns, and each shard's counters as the state store holds them
    assert "<th>share_done</th>" in text and "<th>batches_loaded</th>" in text
    with demo.inspector() as ins:
        checkpoints = ins.state.list_checkpoints(demo.run_id)
    assert len(checkpoints) == SHARDS
    for c in checkpoints:
        assert f"<td>{c.rows_loaded}</td>" in text and f"<td>{c.cursor}</td>" in text
    assert f"shards done {SHARDS}/{SHARDS}, failed 0" in text
    assert "rows in 336,776 = loaded 328,521 + quarantined 8,255" in text
    assert "dedup ledger: 60 entries for 20 fetched batches" in text
    assert f"no errors recorded for run {demo.run_id}" in text
    assert "cancelled flight (no departure time)" in text
    assert "shard 0 batch 0: 20,000 rows" in text and "verified" in text
    # at a glance: a finished run still says where its rows went
    assert (f"run {demo.run_id} (flights) completed in " in text
            and "336,776 rows in, 328,521 loaded (97.5%), 8,255 quarantined (2.5%), most for "
                "'cancelled flight (no departure time)' (drop_rows, 8,255)" in text), text[:3000]
    assert f"every shard of run {demo.run_id} is done" in text
    # the charts: rows per shard loaded vs quarantined, and the quarantine reasons
    assert len(_images(notebook)) == 2
    assert "quarantined %" in text
    return text


@pytest.mark.parametrize("subdir", ["", "notebooks"], ids=["run-dir", "notebooks-subdir"])
def test_notebook_runs_headless_where_the_run_was_made(demo_run: DemoRun, subdir: str) -> None:
    # Given a completed demo run, and a kernel started where `etl run` ran it or in a
    # notebooks/ folder below it (where Jupyter starts a kernel), with no ETL_* setting
    cwd = demo_run.workdir / subdir
    cwd.mkdir(exist_ok=True)
    # When the notebook is executed headless
    notebook = _execute(cwd, _env())
    # Then every cell ran, and it shows the run, its shard table, chart, ledger and payload
    text = _assert_shows_the_run(notebook, demo_run)
    assert "state_url    sqlite:///.etl/state.db   (from default)" in text
    assert not (demo_run.workdir / "notebooks" / ".etl").exists()


def test_notebook_finds_the_run_through_environment_urls(demo_run: DemoRun,
                                                        tmp_path: Path) -> None:
    # Given a kernel started in an unrelated empty directory, and ETL_*_URL pointing at the run
    # When the notebook is executed headless
    notebook = _execute(tmp_path, _env(**demo_run.urls))
    # Then it found the run through the environment, and created nothing where it ran
    text = _assert_shows_the_run(notebook, demo_run)
    assert f"state_url    sqlite:///{demo_run.workdir}/.etl/state.db   (from environment)" in text
    assert list(tmp_path.iterdir()) == []


FAILING = """
import pandas as pd

from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards
from stages import DropRows, StageResult


class Explode:
    name = "explode"

    def apply(self, frame: pd.DataFrame) -> StageResult:
        if (frame["id"] == 5).any():
            raise ValueError("amount column exploded")
        return StageResult(frame)


orders = Pipeline(name="orders", source=FileSource("orders.csv"),
                  stages=[DropRows("amount < 0", reason="negative amount"), Explode()],
                  sink=ParquetSink("out"), key=["id"], shards=RangeShards("id", 2),
                  batch_size=10)
"""


def test_notebook_on_a_run_that_did_not_finish(tmp_path: Path) -> None:
    # Given a run whose shard 0 failed on its first batch, with rows quarantined elsewhere
    (tmp_path / "pipes.py").write_text(FAILING)
    lines = ["id,amount"] + [f"{i},{-1 if i % 10 == 3 else i}" for i in range(100)]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    made = subprocess.run([*_etl_command(), "run", "-p", "pipes:orders", "--no-progress"],
                          cwd=tmp_path, env=_env(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}"),
                          text=True, capture_output=True, timeout=300)
    assert made.returncode == 1, made.stderr
    # When the notebook is executed headless there
    notebook = _execute(tmp_path, _env(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}"))
    # Then it says at a glance that the run failed and where its rows went
    text = _texts(notebook)
    assert " failed in " in text and "quarantined" in text and "'negative amount'" in text
    assert "failed 1" in text and "1 error(s) in TaskErrorLog" in text
    # And it shows the progress chart too (a run not done), the rows per shard and the reasons
    assert len(_images(notebook)) == 3
    assert "clean batch 0: ValueError: amount column exploded" in text


def test_committed_notebook_is_valid_and_has_no_outputs() -> None:
    # Given the notebook as committed
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Then it is a valid nbformat 4 notebook on the python3 kernel
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    # And it carries no outputs and no execution counts
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    # And its parameters cell is tagged for papermill-style runs
    assert "parameters" in code[0].metadata.get("tags", [])


# -- etl.inspect against the demo run ------------------------------------------------------

def test_shards_frame_matches_the_state_store_checkpoints(demo_run: DemoRun) -> None:
    # Given the demo run's checkpoints as the state store returns them
    with demo_run.inspector() as ins:
        checkpoints = ins.state.list_checkpoints(demo_run.run_id)
        # When the shard frame of the newest run (run_id None) is built
        shards = ins.shards()
    # Then it has one row per checkpoint with the same values
    assert list(shards["shard"]) == [c.shard for c in checkpoints] == list(range(SHARDS))
    for row, c in zip(shards.to_dict("records"), checkpoints):
        for name in ("cursor", "fetch_done", "batches_fetched", "batches_cleaned",
                     "batches_loaded", "rows_fetched", "rows_cleaned", "rows_quarantined",
                     "rows_loaded", "last_error"):
            assert row[name] == getattr(c, name), name
        assert row["updated_at"] == pd.Timestamp(c.updated_at)
        assert row["status"] == "done" and row["share_done"] == 1.0
    assert shards["rows_fetched"].sum() == 336_776


def test_raw_batch_rows_equal_the_payload_row_count(demo_run: DemoRun) -> None:
    # Given the RawPayload pointers of the demo run
    with demo_run.inspector() as ins:
        payloads = ins.payloads(demo_run.run_id)
        assert len(payloads) == 20
        # When every batch's raw payload is read back through the inspector
        frames = {(p.shard, p.batch): ins.raw_batch(demo_run.run_id, p.shard, p.batch)
                  for p in payloads.itertuples()}
    # Then each has its pointer's row count, the source's columns, and together all rows
    for p in payloads.itertuples():
        frame = frames[(p.shard, p.batch)]
        assert len(frame) == p.rows
        assert {"carrier", "flight", "origin", "dep_time"} <= set(frame.columns)
    assert sum(len(f) for f in frames.values()) == 336_776


def test_quarantine_holds_every_quarantined_row_with_its_reason(demo_run: DemoRun) -> None:
    with demo_run.inspector() as ins:
        # When the quarantine objects of the run are read
        quarantined = ins.quarantine(demo_run.run_id)
        shards = ins.shards(demo_run.run_id)
        sample = ins.quarantine(demo_run.run_id, limit=10)
    # Then they hold as many rows per shard as the checkpoints counted, each with a reason
    per_shard = quarantined.groupby("shard").size()
    assert per_shard.to_dict() == dict(zip(shards["shard"], shards["rows_quarantined"]))
    assert set(quarantined["_reason"]) == {"cancelled flight (no departure time)"}
    assert set(quarantined["_stage"]) == {"drop_rows"}
    assert quarantined["dep_time"].isna().all()  # cancelled flights: no departure time
    # And a limit reads no more than asked
    assert len(sample) == 10


def test_dedup_ledger_holds_every_stage_of_every_batch(demo_run: DemoRun) -> None:
    with demo_run.inspector() as ins:
        ledger = ins.dedup(demo_run.run_id)
        size = ins.dedup_size(demo_run.run_id)
        state_count = ins.state.count_done(demo_run.run_id)
    assert len(ledger) == 20 and ledger[["fetch", "clean", "load"]].all().all()
    assert size == state_count == 3 * 20


def test_runs_errors_and_tasks_of_the_demo_run(demo_run: DemoRun) -> None:
    with demo_run.inspector() as ins:
        runs = ins.runs()
        errors = ins.errors()
        tasks = ins.tasks()
        with pytest.raises(ConfigError, match="run 'nope' not found"):
            ins.shards("nope")
    assert list(runs["run_id"]) == [demo_run.run_id]
    assert runs.loc[0, "batch_size"] == BATCH_SIZE and runs.loc[0, "source_rows"] == 336_776
    assert errors.empty and "message" in errors.columns
    loads = tasks[tasks["stage"] == "load"]
    assert len(loads) == 20 and set(loads["status"]) == {"completed"}
    assert sorted(zip(loads["shard"], loads["batch"])) == sorted(
        (s, b) for s in range(SHARDS) for b in range(5))


# -- etl.inspect on a small store made here -------------------------------------------------

@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Inspector]:
    """A run "r1" of one shard with one fetched batch of three rows."""
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    objects = open_objects(f"file://{tmp_path}/objects")
    state.create_run(RunRecord(run_id="r1", pipeline="p", plan="hash(id)/1", shards=1))
    state.init_checkpoints("r1", 1)
    info = objects.put_bytes(raw_key("r1", 0, 0),
                             to_parquet_bytes(pd.DataFrame({"id": [1, 2, 3], "v": ["a", "b", "c"]})))
    state.record_fetch(RawPayload(run_id="r1", shard=0, batch=0, key=info.key, bytes=info.bytes,
                                  sha256=info.sha256, rows=3, cursor_start=None, cursor_end=3),
                       exhausted=True)
    inspector = Inspector(state, objects)
    yield inspector
    inspector.close()


def test_raw_batch_checks_the_sha256_of_its_pointer(small_store: Inspector) -> None:
    # Given a batch read back intact
    assert small_store.raw_batch("r1", 0, 0)["id"].tolist() == [1, 2, 3]
    # When its object is overwritten with other content after the fetch
    key = raw_key("r1", 0, 0)
    small_store.objects.put_bytes(key, to_parquet_bytes(pd.DataFrame({"id": [9, 9, 9]})))
    # Then reading it fails with an error naming run, shard, batch and object
    with pytest.raises(PayloadMismatch) as raised:
        small_store.raw_batch("r1", 0, 0)
    message = str(raised.value)
    assert "run r1 shard 0 batch 0" in message and key in message
    assert "does not match its RawPayload pointer" in message
    assert isinstance(raised.value, BatchError)


def test_raw_batch_of_a_missing_batch_or_object_is_a_clear_error(small_store: Inspector) -> None:
    with pytest.raises(ConfigError, match="run r1 shard 0 batch 7 has no RawPayload pointer"):
        small_store.raw_batch(None, 0, 7)
    small_store.objects.delete(raw_key("r1", 0, 0))
    with pytest.raises(BatchError, match="run r1 shard 0 batch 0 .*raw payload object is missing"):
        small_store.raw_batch("r1", 0, 0)


def test_errors_and_quarantine_of_a_small_run(small_store: Inspector) -> None:
    # Given an error whose message and traceback hold a URL with a password
    small_store.state.log_error(ErrorRecord(
        run_id="r1", stage="load", error_type="ConnectionError", shard=0, batch=0,
        message="cannot reach mongodb://etl:hunter2@db:27017/etl",
        traceback="Traceback ...\n  mongodb://etl:hunter2@db:27017/etl\n"))
    # When the errors are listed
    errors = small_store.errors()
    # Then the entry is there with the password masked everywhere
    assert errors.loc[0, "stage"] == "load" and errors.loc[0, "shard"] == 0
    assert errors.loc[0, "message"] == "cannot reach mongodb://etl:***@db:27017/etl"
    assert "hunter2" not in errors.to_string() + "".join(errors["traceback"])
    # And a run that quarantined nothing has an empty quarantine with the usual columns
    quarantined = small_store.quarantine()
    assert quarantined.empty and {"shard", "batch", "_reason", "_stage"} <= set(quarantined.columns)


def test_urls_with_passwords_are_masked_when_shown(tmp_path: Path, small_store: Inspector) -> None:
    # Given an inspector whose result store URL holds a password (opened only when used)
    ins = Inspector.from_urls(f"sqlite:///{tmp_path}/state.db", str(tmp_path / "objects"),
                              "redis://:hunter2@127.0.0.1:6379/0")
    try:
        shown = repr(ins) + ins.backends().to_string()
    finally:
        ins.close()
    # Then neither its repr nor its backends table shows the password
    assert "hunter2" not in shown and "redis://:***@127.0.0.1:6379/0" in shown
    assert f"file://{tmp_path}/objects" in shown


def test_an_unreachable_result_store_is_one_clear_error(tmp_path: Path,
                                                        small_store: Inspector) -> None:
    # Given a result store URL (with a password) where nothing listens
    port = free_port()
    ins = Inspector.from_urls(f"sqlite:///{tmp_path}/state.db", str(tmp_path / "objects"),
                              f"redis://:hunter2@127.0.0.1:{port}/0")
    try:
        # When the run's task records are asked for
        with pytest.raises(EtlError) as raised:
            ins.tasks("r1")
    finally:
        ins.close()
    # Then the error names the store, masked, and the state views still work
    assert f"cannot read the result store redis://:***@127.0.0.1:{port}/0" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert list(small_store.shards("r1")["shard"]) == [0]


def test_from_settings_never_creates_an_empty_state_store(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a directory where `etl run` never ran, and no ETL_* setting
    for name in [n for n in os.environ if n.startswith("ETL_")]:
        monkeypatch.delenv(name)
    # When an inspector is asked for its state
    with pytest.raises(ConfigError, match="no state store at sqlite:///.*: run `etl run`"):
        Inspector.from_settings(tmp_path)
    # Then it says so, and leaves no empty database behind
    assert not (tmp_path / ".etl").exists()


def test_from_settings_reads_etl_toml_relative_to_the_project(demo_run: DemoRun, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a project whose etl.toml names relative state and object paths
    project = tmp_path / "project"
    shutil.copytree(demo_run.workdir / ".etl", project / "state")
    (project / "etl.toml").write_text('[etl]\nstate_url = "sqlite:///state/state.db"\n'
                                      'objects_url = "file://state/objects"\n'
                                      'results_url = "sqlite:///state/results.db"\n')
    (project / "notebooks").mkdir()
    for name in [n for n in os.environ if n.startswith("ETL_")]:
        monkeypatch.delenv(name)
    # When an inspector is opened from its notebooks/ folder
    monkeypatch.chdir(project / "notebooks")
    assert find_project_dir() == project
    with Inspector.from_settings() as ins:
        # Then it uses the project's settings, its paths resolved against the project
        assert set(ins.backends()["from"]) == {"etl.toml"}
        assert ins.run().run_id == demo_run.run_id
        assert len(ins.raw_batch(None, 1, 0)) == BATCH_SIZE


@pytest.mark.parametrize("counts,expected_rows,share", [
    ({"fetch_done": True, "batches_fetched": 4, "batches_loaded": 4}, None, 1.0),
    ({"fetch_done": True, "batches_fetched": 4, "batches_loaded": 1}, None, 0.25),
    ({"fetch_done": True, "batches_fetched": 0, "batches_loaded": 0}, None, 1.0),
    ({"batches_fetched": 2, "batches_loaded": 1, "rows_fetched": 500}, 1000.0, 0.25),
    ({"batches_fetched": 2, "batches_loaded": 2, "rows_fetched": 5000}, 1000.0, 0.99),
    ({"batches_fetched": 0, "batches_loaded": 0}, 1000.0, 0.0),
    ({"batches_fetched": 2, "batches_loaded": 1, "rows_fetched": 500}, None, math.nan),
])
def test_share_done_estimates_a_shards_progress(counts: dict[str, Any],
                                               expected_rows: float | None, share: float) -> None:
    value = share_done(Checkpoint(run_id="r", shard=0, **counts), expected_rows)
    assert (math.isnan(value) and math.isnan(share)) or value == pytest.approx(share)
