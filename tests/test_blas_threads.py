"""numpy's OpenBLAS in a process that works runs: one thread, unless the user said.

Each case is a fresh interpreter (OpenBLAS starts its threads as numpy loads), counting
its own threads in /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from etl.core.blas_threads import SETTINGS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(),
                                reason="counts threads in /proc (Linux)")

COUNT = """
    import os
    {setup}
    import numpy
    names = [open(f"/proc/self/task/{task}/comm").read().strip()
             for task in os.listdir("/proc/self/task")]
    print(sum(name != "jemalloc_bg_thd" for name in names),  # (pyarrow's, idle)
          os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def _threads(setup: str, **env: str) -> tuple[int, str]:
    """(threads of a fresh interpreter after `setup` and numpy's import, not counting the
    idle one pyarrow's jemalloc starts as pyarrow loads; the OPENBLAS_NUM_THREADS it then
    sees)."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    clean.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(COUNT.replace("{setup}", setup))],
                          env=clean, text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    threads, setting = done.stdout.split()
    return int(threads), setting


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread on one core")
def test_numpy_alone_starts_blas_threads() -> None:
    # Given a plain interpreter on a machine with several cores
    # When numpy loads
    threads, _ = _threads("")
    # Then OpenBLAS has started threads of its own (what the toolkit's processes avoid)
    assert threads > 1


def test_a_run_process_loads_numpy_with_one_blas_thread() -> None:
    # Given the toolkit's set-up before pyarrow (and numpy) load
    # When numpy loads
    threads, setting = _threads("from etl.core.arrow_pool import choose_pool; "
                                "choose_pool(long_lived=False)")
    # Then the process has its main thread only, and the environment is as it was
    assert (threads, setting) == (1, "None")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread on one core")
def test_a_thread_count_the_user_set_is_kept() -> None:
    # Given OPENBLAS_NUM_THREADS=2 in the environment
    # When the toolkit's set-up runs and numpy loads
    threads, setting = _threads("from etl.core.blas_threads import one_blas_thread; "
                                "one_blas_thread()", OPENBLAS_NUM_THREADS="2")
    # Then OpenBLAS runs the user's two threads
    assert (threads, setting) == (2, "2")
