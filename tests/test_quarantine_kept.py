"""Where quarantined rows are kept: a batch's few ride in its clean's commit to the state
store, a large quarantine is a Parquet object; both read back the same, also after a
SIGKILL between the clean's work and its commit."""

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

from etl.core.names import quarantine_key
from etl.core.parquet import from_parquet_bytes
from etl.runtime.quarantine import KEPT_BYTES, KEPT_ROWS, ROW_COLUMN, keep, quarantine_bytes, read
from etl.stores.objects import open_objects
from etl.stores.state import open_state
from etl.stores.state.base import RawPayload


@pytest.fixture
def stores(tmp_path: Path):  # type: ignore[no-untyped-def]
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    objects = open_objects(f"file://{tmp_path}/objects")
    state.init_checkpoints("r", 1)
    state.record_fetch(RawPayload(run_id="r", shard=0, batch=0, key="raw", bytes=1, sha256="x",
                                  rows=5000, cursor_start=None, cursor_end=1), exhausted=True)
    yield state, objects
    state.close()


def _rejected(rows: int, *, text: str = "n/a") -> pd.DataFrame:
    """Rows as clean_frame leaves them: the row's own columns (one mixing numbers and
    text, nullable integers, zoned times), the reason and stage, ROW_COLUMN last."""
    return pd.DataFrame({
        "flight": pd.array([i if i % 3 else None for i in range(rows)], dtype="Int64"),
        "dep_delay": [i if i % 2 else text for i in range(rows)],  # mixed kinds
        "at": pd.date_range("2013-01-01", periods=rows, freq="min", tz="America/New_York"),
        "_reason": ["dep_delay is not a number"] * rows,
        "_stage": ["cast"] * rows,
        ROW_COLUMN: np.arange(rows, dtype=np.int64) * 2,
    })


def _commit(state, data: bytes | None, rows: int) -> None:  # type: ignore[no-untyped-def]
    state.complete_stage("r", 0, 0, "clean", {"rows_cleaned": 0, "rows_quarantined": rows},
                         quarantine=data)


def test_a_few_rejected_rows_ride_in_the_commit(stores) -> None:  # type: ignore[no-untyped-def]
    # Given the 40 rows a batch's clean rejected
    state, objects = stores
    rejected = _rejected(40)
    # When they are kept and the clean is committed with them
    data = keep(objects, "r", 0, 0, rejected)
    _commit(state, data, len(rejected))
    # Then they are in the state store, no object was written
    assert data is not None and state.get_quarantine("r", 0, 0) == data
    assert not list(objects.list("runs/"))
    # And they read back as the Parquet object of them would (mixed column as text)
    back = read(state, objects, "r", 0, 0)
    as_object = from_parquet_bytes(quarantine_bytes(rejected))
    pd.testing.assert_frame_equal(back, as_object)
    assert back[ROW_COLUMN].tolist() == list(range(0, 80, 2)) and str(back["at"].dt.tz) == "America/New_York"


def test_a_large_quarantine_is_an_object(stores) -> None:  # type: ignore[no-untyped-def]
    # Given a batch whose clean rejected KEPT_ROWS rows (a whole batch refused, say)
    state, objects = stores
    rejected = _rejected(KEPT_ROWS)
    # When they are kept and the clean is committed
    data = keep(objects, "r", 0, 0, rejected)
    _commit(state, data, len(rejected))
    # Then they are a Parquet object, nothing rides in the state store, and they read back
    assert data is None and state.get_quarantine("r", 0, 0) is None
    assert objects.exists(quarantine_key("r", 0, 0))
    back = read(state, objects, "r", 0, 0)
    assert back is not None and len(back) == KEPT_ROWS
    assert back[ROW_COLUMN].tolist() == list(range(0, 2 * KEPT_ROWS, 2))


def test_few_rows_of_long_text_are_an_object(stores) -> None:  # type: ignore[no-untyped-def]
    # Given ten rejected rows that each hold a long text (over KEPT_BYTES in all)
    state, objects = stores
    rejected = _rejected(10, text="x" * (KEPT_BYTES // 5))
    # When they are kept, Then they are an object, not a large row of the state store
    assert keep(objects, "r", 0, 0, rejected) is None
    assert objects.exists(quarantine_key("r", 0, 0))
    back = read(state, objects, "r", 0, 0)
    assert back is not None and len(back) == 10


def test_no_rejected_rows_keep_nothing(stores) -> None:  # type: ignore[no-untyped-def]
    # Given a clean that rejected nothing, When it is kept and committed
    state, objects = stores
    data = keep(objects, "r", 0, 0, _rejected(0))
    _commit(state, data, 0)
    # Then nothing is kept anywhere, and reading finds none
    assert data is None and not list(objects.list("runs/"))
    assert read(state, objects, "r", 0, 0) is None


PIPELINE = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards
from stages import DropRows

HERE = Path(__file__).parent

pipeline = Pipeline(name="kept", source=FileSource(str(HERE / "amounts.csv")),
                    stages=[DropRows("amount < 0", reason="negative amount")],
                    sink=ParquetSink(str(HERE / "out")), key=["id"],
                    shards=RangeShards("id", 4), batch_size=2500)
'''
ROWS = 8000
#: ids 0..1199 (shard 0) are all negative: a quarantine of 1,200 rows, an object; the
#: other shards' batches reject every 50th id, a few dozen rows each, in the state store
NEGATIVE = sorted(set(range(1200)) | set(range(2000, ROWS, 50)))


def test_a_run_killed_before_its_clean_commits_keeps_each_rejected_row_once(tmp_path: Path) -> None:
    # Given a source whose first shard is refused whole and whose others lose a few rows
    amounts = np.arange(ROWS, dtype=float) + 1
    amounts[NEGATIVE] *= -1
    pd.DataFrame({"id": np.arange(ROWS), "amount": amounts}).to_csv(tmp_path / "amounts.csv",
                                                                    index=False)
    (tmp_path / "kept.py").write_text(PIPELINE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd()])

    def etl(*args: str, crash_at: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=tmp_path,
                              env={**env, **({"ETL_CRASH_AT": crash_at} if crash_at else {})},
                              text=True, capture_output=True, timeout=300)

    command = ("run", "-p", "kept:pipeline", "--no-progress", "--processes", "1")
    # When the run is killed by SIGKILL after a clean's work, before its commit, twice
    for point in ("clean.after_stage:2", "clean.after_stage:3"):
        killed = etl(*command, crash_at=point)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = etl(*command)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run ", 1)[1].split(":", 1)[0].strip()
    # Then every rejected row is in the quarantine exactly once, with its reason
    listed = etl("quarantine", "list", run_id, "--json", "--limit", str(ROWS))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(int(r["id"]) for r in rows) == NEGATIVE
    assert {r["_reason"] for r in rows} == {"negative amount"}
    # And every other row is loaded once
    loaded = pd.concat([pd.read_parquet(f) for f in (tmp_path / "out").glob("*.parquet")])
    assert sorted(loaded["id"]) == sorted(set(range(ROWS)) - set(NEGATIVE))
    # And both kinds were used: the refused batch is an object, the others ride in the state
    state = open_state(f"sqlite:///{tmp_path}/.etl/state.db")
    objects = open_objects(f"file://{tmp_path}/.etl/objects")
    try:
        payloads = state.list_payloads(run_id)
        in_state = [p for p in payloads if state.get_quarantine(run_id, p.shard, p.batch)]
        as_objects = list(objects.list(f"runs/{run_id}/quarantine/"))
        assert len(as_objects) == 1 and "shard=0" in as_objects[0]
        assert {p.shard for p in in_state} == {1, 2, 3}
    finally:
        state.close()
