"""Embedded mode: a worker process killed under `etl run` (the OOM killer, a stray kill)
does not end the run; its shards are started again in the same invocation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tests.test_cli import _user_pipeline
from tests.watch import children, rows_loaded


def test_a_killed_worker_process_is_replaced_and_the_run_completes(tmp_path: Path) -> None:
    # Given 60,000 orders in 4 shards of small batches, run by 2 worker processes
    lines = ["order_id,amount,sku"] + [f"{i},{i * 1.5},sku{i % 7}" for i in range(60_000)]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    _user_pipeline(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(PYTHONPATH=str(tmp_path), ETL_LEASE_TTL="3")
    run = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "-p", "mypipes:orders",
                            "--shards", "4", "--batch-size", "500", "--processes", "2",
                            "--no-progress"], cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # When one of its worker processes is SIGKILLed once loading has begun
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        workers = children(run.pid)
        if workers and rows_loaded(tmp_path) > 0:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    out, err = run.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    # Then the same invocation completes the run, exit 0, every order loaded once
    assert run.returncode == 0, err
    assert "completed" in out and "starting their" in err
    loaded = pd.read_parquet(tmp_path / "out" / "orders")
    assert len(loaded) == 60_000 and loaded["order_id"].is_unique
