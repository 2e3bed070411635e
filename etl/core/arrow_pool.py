"""Arrow's memory pool for the toolkit's processes: the system allocator for one run,
jemalloc for a long-lived worker.

pyarrow's wheels default to mimalloc on Linux. Every run allocates its parsed source, its
gathered shards and its batches fresh, and page faults are what that memory costs: on a
2-core machine with transparent huge pages in `madvise` mode, mimalloc took the 10x demo's
memory with a tenth of jemalloc's page faults (large pages, most likely) yet spent 0.4-3.6 s
of system time on the same parse, varying from run to run.

- A process that reads a run's source (`etl run` and `etl.run` embedded, or the sender of
  a distributed run that plans the run itself; a sender whose run a worker plans reads
  nothing and leaves the pool alone): the system allocator (glibc). Its free lists keep
  what a batch freed for the next batch, where jemalloc hands dirty pages back to the
  kernel after a second and faults them in again; the process ends with the run, so
  holding memory costs nothing. 10x demo, `etl run --shards 20`, 4
  alternated rounds on a 2-core AMD EPYC VM: median 6.78 s wall, 11.9 s CPU and ~660k
  page faults with glibc, 7.31 s, 12.9 s and ~790k with jemalloc. The demo: the same
  within the noise (1.86 s both).
- A worker (`etl worker`): jemalloc, also bundled with pyarrow. It lives for many runs,
  with threads allocating side by side, and jemalloc gives memory back to the kernel and
  resists fragmentation there. Against mimalloc, on an earlier machine: the 10x parse
  1.0-1.2 s instead of 1.1-2.7 s.

`ARROW_DEFAULT_MEMORY_POOL` (Arrow's own setting: jemalloc, mimalloc or system), when set,
is the user's choice and is left alone. Forked worker processes inherit the pool.

A run's choice is made as pyarrow loads, through that same setting, set for the import only:
Arrow's C++ code reads it once, and its own allocations (the Parquet writer's buffers,
kernel scratch space) go to that default, which `pyarrow.set_memory_pool` does not reach.
Left to mimalloc, those took 2 MB huge pages, each zeroed by the kernel on first touch, in
both worker processes of the demo: 5.5% of the run's CPU in `clear_page_erms` (perf).
Where pyarrow is loaded already (a notebook), `set_memory_pool` still moves pyarrow's own
allocations. A worker's jemalloc is set only that way: a pyarrow built without jemalloc
would print a warning at import for a setting naming it, and a long-lived process reuses
what mimalloc mapped. numpy loads with pyarrow: its OpenBLAS threads are settled first
(etl.core.blas_threads).
"""

from __future__ import annotations

import logging
import os
import sys

from etl.core.blas_threads import one_blas_thread
from etl.core.lazy import import_with_setting

log = logging.getLogger(__name__)

#: Arrow's setting naming its default pool; read by pyarrow itself when it is imported.
ARROW_POOL_SETTING = "ARROW_DEFAULT_MEMORY_POOL"

_chosen = False


def choose_pool(*, long_lived: bool) -> None:
    """Set Arrow's default pool in this process, unless the user named one: jemalloc for a
    `long_lived` worker (the system pool where this pyarrow lacks jemalloc), the system
    allocator for one run. Call before the large allocations (a parse); the first call in
    a process decides."""
    global _chosen
    if _chosen or os.environ.get(ARROW_POOL_SETTING):
        return
    one_blas_thread()
    if not long_lived and "pyarrow" not in sys.modules:  # Arrow's C++ default too (see above)
        import_with_setting("pyarrow", ARROW_POOL_SETTING, "system")
    import pyarrow as pa

    pool = pa.system_memory_pool()
    if long_lived:
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # pyarrow built without jemalloc
            log.debug("pyarrow has no jemalloc: a worker allocates through the system pool")
    pa.set_memory_pool(pool)
    _chosen = True


__all__ = ["ARROW_POOL_SETTING", "choose_pool"]
