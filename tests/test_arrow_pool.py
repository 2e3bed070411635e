"""Arrow's memory pool: a run allocates through the system allocator, a worker through
jemalloc, unless the user named a pool.

Each case is a fresh interpreter (the pool is process-wide and chosen once), with
ARROW_DEFAULT_MEMORY_POOL set or unset as the case says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    pa.jemalloc_memory_pool()
    HAS_JEMALLOC = True
except NotImplementedError:
    HAS_JEMALLOC = False

needs_jemalloc = pytest.mark.skipif(not HAS_JEMALLOC, reason="this pyarrow has no jemalloc")


def _pool_after(code: str, *, cwd: Path, pool: str | None = None) -> str:
    """The backend of Arrow's default pool printed by `code`'s last line, in a new process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ETL_") and k != "ARROW_DEFAULT_MEMORY_POOL"}
    env["PYTHONPATH"] = f"{cwd}{os.pathsep}{ROOT}"
    if pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _orders_project(folder: Path) -> None:
    """A small CSV pipeline (`mypipes:orders`, 200 rows, 2 hash shards) in `folder`."""
    (folder / "orders.csv").write_text(
        "order_id,sku\n" + "".join(f"{i},s{i % 5}\n" for i in range(200)))
    (folder / "mypipes.py").write_text(textwrap.dedent("""
        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards

        orders = Pipeline(name="orders", source=FileSource("orders.csv"), stages=[],
                          sink=ParquetSink("out/orders"), key=["order_id"],
                          shards=HashShards(["order_id"], 2))
    """))


def test_a_run_allocates_through_the_system_pool(tmp_path: Path) -> None:
    # Given a small CSV pipeline, in a process that named no Arrow pool
    _orders_project(tmp_path)
    # When it runs to its end through etl.run
    backend = _pool_after("""
        import pyarrow as pa
        import etl
        outcome = etl.run("mypipes:orders", fresh=True, processes=1)
        assert outcome.completed and outcome.rows_loaded == 200, outcome
        print(pa.default_memory_pool().backend_name)
    """, cwd=tmp_path)
    # Then its Arrow allocations went through the system allocator, not pyarrow's default
    assert backend == "system"


@pytest.mark.parametrize("named", ["system", "mimalloc"])
def test_a_pool_the_user_named_is_kept(tmp_path: Path, named: str) -> None:
    # Given ARROW_DEFAULT_MEMORY_POOL naming a pool
    # When the toolkit chooses its pool
    backend = _pool_after("""
        import pyarrow as pa
        from etl.core.arrow_pool import choose_pool
        choose_pool(long_lived=False)
        choose_pool(long_lived=True)
        print(pa.default_memory_pool().backend_name)
    """, cwd=tmp_path, pool=named)
    # Then that pool stays
    assert backend == named


@needs_jemalloc
def test_a_worker_chooses_the_pool_before_it_serves(tmp_path: Path) -> None:
    # Given `etl worker`'s entry (serve) with a broker URL, its worker loop replaced by a
    # probe of Arrow's pool (the pool must be chosen before a --preload parse or a fork)
    # When it starts
    backend = _pool_after("""
        import pyarrow as pa
        import etl.runtime.worker as worker
        from etl.core.config import load_settings

        worker.run_worker = lambda settings, options, stop: print(
            pa.default_memory_pool().backend_name)
        settings = load_settings(env={"ETL_BROKER_URL": "redis://127.0.0.1:6379/15"})
        worker.serve(settings, worker.WorkerOptions(), processes=1)
    """, cwd=tmp_path)
    # Then Arrow allocates through jemalloc before any work
    assert backend == "jemalloc"


def test_arrows_own_allocations_skip_mimalloc_when_the_run_loads_pyarrow(tmp_path: Path) -> None:
    # Given the same small pipeline, in a process that has not loaded pyarrow
    _orders_project(tmp_path)
    # When it runs to its end (parse, Parquet writes) and then reads Arrow's pools
    seen = _pool_after("""
        import os, sys
        import etl
        assert "pyarrow" not in sys.modules
        outcome = etl.run("mypipes:orders", fresh=True, processes=1)
        assert outcome.completed and outcome.rows_loaded == 200, outcome
        import pyarrow as pa
        print(pa.default_memory_pool().backend_name, pa.mimalloc_memory_pool().max_memory(),
              os.environ.get("ARROW_DEFAULT_MEMORY_POOL"))
    """, cwd=tmp_path)
    # Then Arrow's C++ default was the system pool too (mimalloc never held a byte), and
    # the setting used for the import is gone from the environment
    assert seen.split() == ["system", "0", "None"]
