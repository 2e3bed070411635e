"""Benchmark: the result store on Redis (this machine's server) and SQLite.

Prints, per backend: writes/s (one record at a time, and pipelined in chunks of 1,000 where
the backend has store_many), status updates/s, get latency p50/p95, get_many of 1,000 ids,
cleanup rate, and for Redis the memory that 100,000 records take (INFO memory, before and
after, in a database of its own that is flushed at the end).

    python bench/bench_results.py [--records 100000] [--redis redis://127.0.0.1:6379/13]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import JobResult, open_results  # noqa: E402
from results.redis import RedisResultStore  # noqa: E402


def job(i: int, run: str) -> JobResult:
    return JobResult(job_id=f"{run}-{i}", function="etl_load", status="queued", queue="etl",
                     run_id=run, args=[run, i % 20, i // 20], stage="load", max_retries=5)


def timed(label: str, count: int, fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    print(f"  {label:42s} {count / elapsed:12,.0f} /s   ({elapsed:.2f} s for {count:,})")
    return elapsed


def bench(name: str, store, records: int) -> None:  # type: ignore[no-untyped-def]
    print(f"\n{name}: {store.url}")
    run = uuid.uuid4().hex[:8]
    single = min(records, 5_000)
    timed("store, one record per call", single, lambda: [store.store(job(i, run)) for i in range(single)])
    if hasattr(store, "store_many"):
        timed("store_many, pipelined chunks of 1,000", records - single, lambda: [
            store.store_many([job(i, run) for i in range(start, min(start + 1000, records))])
            for start in range(single, records, 1000)])
    else:
        timed("store (no pipelining in this backend)", records - single,
              lambda: [store.store(job(i, run)) for i in range(single, records)])
    updates = min(records, 5_000)
    timed("update_status queued -> in_progress", updates,
          lambda: [store.update_status(f"{run}-{i}", "in_progress") for i in range(updates)])
    latencies = []
    for i in range(2_000):
        started = time.perf_counter()
        store.get(f"{run}-{(i * 7919) % records}")
        latencies.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(latencies, n=100)
    print(f"  {'get latency':42s} p50 {q[49]:.3f} ms   p95 {q[94]:.3f} ms")
    ids = [f"{run}-{(i * 104729) % records}" for i in range(1_000)] + ["missing-1", "missing-2"]
    times = []
    for _ in range(10):
        started = time.perf_counter()
        found = store.get_many(ids)
        times.append((time.perf_counter() - started) * 1000)
    print(f"  {'get_many of 1,000 ids (+2 missing)':42s} median {statistics.median(times):.1f} ms "
          f"({len(found)} found)")
    short = f"{run}-short"
    for i in range(2_000):
        store.store(job(i, short), ttl=timedelta(milliseconds=200))
    time.sleep(0.5)
    timed("cleanup_expired (2,000 expired)", 2_000, store.cleanup_expired)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    redis_store = RedisResultStore(args.redis, prefix="bench")
    redis_store.client.flushdb()
    before = redis_store.client.info("memory")["used_memory"]
    bench("Redis", redis_store, args.records)
    after = redis_store.client.info("memory")["used_memory"]
    print(f"  {'memory for the records above':42s} {(after - before) / 2**20:.1f} MiB "
          f"({(after - before) / args.records:.0f} bytes per record)")
    redis_store.client.flushdb()
    with tempfile.TemporaryDirectory() as workdir:
        bench("SQLite", open_results(f"sqlite:///{workdir}/results.db"), args.records)


if __name__ == "__main__":
    main()
