"""The demo pipeline, run once as a user runs it, leaves a completed record for every message
in the default result store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from results import open_results


def test_demo_run_records_every_message_completed(tmp_path: Path) -> None:
    # Given the built-in demo and the embedded defaults
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["ETL_DEMO_OUTPUT"] = str(tmp_path / "out")
    command = [sys.executable, "-m", "cli.main"]
    # When `etl run --shards 20` runs to the end
    run = subprocess.run([*command, "run", "--shards", "20", "--no-progress"], cwd=tmp_path,
                         env=env, text=True, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr
    status = json.loads(subprocess.run([*command, "status", "--json"], cwd=tmp_path, env=env,
                                       text=True, capture_output=True, timeout=60).stdout)
    run_id, batches = status["run"]["run_id"], status["totals"]["batches_fetched"]
    # Then the result store holds one completed record per fetch, clean and load message
    store = open_results(f"sqlite:///{tmp_path}/.etl/results.db")
    jobs = store.list(run_id=run_id, limit=10_000)
    steps = [j for j in jobs if j.function.startswith("etl_")]
    assert batches >= 20 and len(steps) == 3 * batches
    assert all(j.status == "completed" for j in steps)
    fetches = [j for j in steps if j.function == "etl_fetch"]
    assert sum(j.result["rows"] for j in fetches) == 336_776
    # (a fetch's progress is the share of its shard read so far; each shard's last is 1.0)
    assert sum(j.progress == 1.0 for j in fetches) == 20 and all(0 < j.progress <= 1 for j in fetches)
    assert sum(j.result["rows"] for j in steps if j.function == "etl_load") == status["totals"]["rows_loaded"]
    # And the run's own record is completed with its totals
    record = store.get(run_id)
    assert record is not None and record.status == "completed" and record.progress == 1.0
    assert record.result == {"rows_loaded": status["totals"]["rows_loaded"],
                             "rows_quarantined": status["totals"]["rows_quarantined"]}
