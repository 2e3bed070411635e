"""numpy's OpenBLAS in a process that works runs: one thread.

numpy's wheels bundle OpenBLAS, which starts a thread per extra core as numpy loads, and that
thread spins, waiting for matrix work, before it sleeps. An ETL run does no matrix work, yet
on the 2-core demo machine the spinning thread took 4.9% of the whole `etl run`'s CPU
(perf), in the parent, while the source was parsed and pandas imported: time taken from the
two threads the run's start waits on. A run's parallelism is its processes and worker
threads, so such a process asks OpenBLAS for one thread before numpy loads, unless the user
said how many (OPENBLAS_NUM_THREADS, or GOTO_NUM_THREADS or OMP_NUM_THREADS, which
OpenBLAS reads too). The environment is left as it was found: only this process's OpenBLAS,
and the forks that inherit it, are set.
"""

from __future__ import annotations

import os
import sys

from etl.core.lazy import import_with_setting

#: The settings OpenBLAS reads its thread count from, in its order.
SETTINGS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def one_blas_thread() -> None:
    """Load numpy with a single OpenBLAS thread, unless numpy is loaded already (its
    threads exist) or the user set the thread count."""
    if "numpy" in sys.modules or any(os.environ.get(name) for name in SETTINGS):
        return
    import_with_setting("numpy", "OPENBLAS_NUM_THREADS", "1")  # read as OpenBLAS loads


__all__ = ["SETTINGS", "one_blas_thread"]
