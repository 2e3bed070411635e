"""Arrow's memory pool for the toolkit's processes: jemalloc where pyarrow has it.

pyarrow's wheels default to mimalloc on Linux. Every run allocates its parsed source, its
gathered shards and its batches fresh. On a 2-core machine with transparent huge pages in
`madvise` mode, mimalloc took that memory with a tenth of jemalloc's page faults (large
pages, most likely) yet spent 0.4-3.6 s of system time on the same 10x-demo parse, varying
from run to run; jemalloc, also bundled with pyarrow, spent 0.5-0.7 s. Whole `etl run` on
the 10x demo (bench/tenx.py, 4 alternated rounds): 5.1-5.8 s wall with jemalloc, 6.1-7.8 s
with mimalloc; the parse alone 1.0-1.2 s instead of 1.1-2.7 s.

`ARROW_DEFAULT_MEMORY_POOL` (Arrow's own setting: jemalloc, mimalloc or system), when set,
is the user's choice and is left alone. Forked worker processes inherit the pool.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: Arrow's setting naming its default pool; read by pyarrow itself when it is imported.
ARROW_POOL_SETTING = "ARROW_DEFAULT_MEMORY_POOL"

_chosen = False


def use_jemalloc() -> None:
    """Make jemalloc Arrow's default pool in this process, unless the user named a pool or
    this pyarrow was built without jemalloc (then its default stays). Call before the
    large allocations (a parse); cheap to call again."""
    global _chosen
    if _chosen or os.environ.get(ARROW_POOL_SETTING):
        return
    _chosen = True
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # pyarrow built without jemalloc
        log.debug("pyarrow has no jemalloc: keeping its %s pool",
                  pa.default_memory_pool().backend_name)
        return
    pa.set_memory_pool(pool)


__all__ = ["ARROW_POOL_SETTING", "use_jemalloc"]
