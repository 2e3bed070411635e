"""Benchmark: the result stores, with the goals Redis must meet.

Per backend: writes/s one record at a time, pipelined (store_many in chunks of 1,000) and as
the recorder writes them (write_many of new records, then of status changes, in batches
of 1,000), update_status/s, get latency p50/p95, get_many of 1,000 ids, and cleanup of
`--expired` expired records among the live ones. For Redis also the memory that the
records take (INFO memory, before and after, in a database of its own, flushed at the end).

Goals (Redis): cleanup >= 10k records/s, pipelined writes >= 10k/s, get p95 < 2 ms,
100,000 records < 100 MB. Each is printed with PASS or FAIL; the exit status is 1 if one
failed. Rates are wall-clock (Redis's own work included); this process's CPU rate is
printed beside each, as a loaded machine stretches the wall clock of everything.

    python bench/bench_results.py [--records 100000] [--expired 20000]
        [--redis redis://127.0.0.1:6379/13] [--sqlite] [--postgres URL] [--mariadb URL]
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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import JobResult, open_results  # noqa: E402
from results.changes import NewRecord, StatusChange  # noqa: E402
from results.redis import RedisResultStore  # noqa: E402


def job(i: int, run: str) -> JobResult:
    return JobResult(job_id=f"{run}-{i}", function="etl_load", status="queued", queue="etl",
                     run_id=run, args=[run, i % 20, i // 20], stage="load", max_retries=5)


def timed(label: str, count: int, fn: Callable[[], Any]) -> float:
    """Run `fn`, print and return its rate (per second) over `count` items."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    rate = count / elapsed
    print(f"  {label:46s} {rate:10,.0f} /s  ({elapsed:.2f} s for {count:,}; this process's "
          f"CPU {count / cpu if cpu else float('inf'):,.0f} /s)")
    return rate


def bench(name: str, store: Any, records: int, expired: int,
          written: Callable[[], None] | None = None) -> dict[str, float]:
    """The figures of one store; returns those the goals are about. `written` is called
    once the live records are written (before the short-lived ones)."""
    print(f"\n{name}: {store.url}")
    run = uuid.uuid4().hex[:8]
    figures: dict[str, float] = {}
    single = min(records // 4, 5_000)
    timed("store, one record per call", single,
          lambda: [store.store(job(i, run)) for i in range(single)])
    half = single + (records - single) // 2
    if hasattr(store, "store_many"):
        figures["pipelined"] = timed("store_many, pipelined chunks of 1,000", half - single, lambda: [
            store.store_many([job(i, run) for i in range(start, min(start + 1000, half))])
            for start in range(single, half, 1000)])
    figures["batched"] = timed("write_many of new records (the recorder)", records - half, lambda: [
        store.write_many([NewRecord(job(i, run)) for i in range(start, min(start + 1000, records))])
        for start in range(half, records, 1000)])
    moves = min(records // 2, 20_000)
    timed("write_many of status changes, batches of 1,000", moves, lambda: [
        store.write_many([StatusChange(f"{run}-{i}", "in_progress")
                          for i in range(start, min(start + 1000, moves))])
        for start in range(0, moves, 1000)])
    updates = min(records - moves, 2_000)
    timed("update_status queued -> in_progress", updates, lambda: [
        store.update_status(f"{run}-{i}", "in_progress") for i in range(moves, moves + updates)])
    latencies = []
    for i in range(2_000):
        started = time.perf_counter()
        store.get(f"{run}-{(i * 7919) % records}")
        latencies.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(latencies, n=100)
    figures["get_p95_ms"] = q[94]
    print(f"  {'get latency':46s} p50 {q[49]:.3f} ms   p95 {q[94]:.3f} ms")
    ids = [f"{run}-{(i * 104729) % records}" for i in range(1_000)] + ["missing-1", "missing-2"]
    times = []
    for _ in range(10):
        started = time.perf_counter()
        found = store.get_many(ids)
        times.append((time.perf_counter() - started) * 1000)
    print(f"  {'get_many of 1,000 ids (+2 missing)':46s} median {statistics.median(times):.1f} ms "
          f"({len(found)} found)")
    if written is not None:
        written()
    short = f"{run}-short"
    for start in range(0, expired, 1000):
        store.write_many([NewRecord(job(i, short), ttl=timedelta(milliseconds=300))
                          for i in range(start, min(start + 1000, expired))])
    time.sleep(0.6)
    started = time.perf_counter()
    removed = store.cleanup_expired()
    elapsed = time.perf_counter() - started
    figures["cleanup"] = removed / elapsed if elapsed else float("inf")
    print(f"  {f'cleanup_expired ({expired:,} expired, {records:,} live)':46s} "
          f"{figures['cleanup']:12,.0f} /s   ({elapsed:.3f} s, {removed:,} removed)")
    return figures


def goal(label: str, ok: bool, shown: str) -> bool:
    print(f"  {'PASS' if ok else 'FAIL'}  {label:40s} {shown}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--expired", type=int, default=20_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--sqlite", action="store_true", help="Also the SQLite store.")
    parser.add_argument("--postgres", help="Also a PostgreSQL store at this URL.")
    parser.add_argument("--mariadb", help="Also a MariaDB store at this URL.")
    args = parser.parse_args()
    redis_store = RedisResultStore(args.redis, prefix="bench")
    redis_store.client.flushdb()
    before = redis_store.client.info("memory")["used_memory"]
    after: list[int] = []
    figures = bench("Redis", redis_store, args.records, args.expired,
                    lambda: after.append(redis_store.client.info("memory")["used_memory"]))
    used = after[0] - before
    print(f"  {'memory for the live records above':46s} {used / 2**20:.1f} MiB "
          f"({used / args.records:.0f} bytes per record)")
    redis_store.client.flushdb()
    per_100k = used / args.records * 100_000 / 2**20
    print("\nGoals (Redis):")
    results = [
        goal("cleanup >= 10,000 records/s", figures["cleanup"] >= 10_000,
             f"{figures['cleanup']:,.0f} /s"),
        goal("pipelined writes >= 10,000/s", min(figures["pipelined"], figures["batched"]) >= 10_000,
             f"{figures['pipelined']:,.0f} /s store_many, {figures['batched']:,.0f} /s write_many"),
        goal("get p95 < 2 ms", figures["get_p95_ms"] < 2, f"{figures['get_p95_ms']:.3f} ms"),
        goal("100,000 records < 100 MB", per_100k < 100, f"{per_100k:.1f} MiB per 100,000"),
    ]
    others: list[tuple[str, str]] = []
    if args.sqlite:
        others.append(("SQLite", "sqlite:///{tmp}/results.db"))
    if args.postgres:
        others.append(("PostgreSQL", f"{args.postgres}?key_prefix=bench{uuid.uuid4().hex[:6]}"))
    if args.mariadb:
        others.append(("MariaDB", f"{args.mariadb}?key_prefix=bench{uuid.uuid4().hex[:6]}"))
    for name, url in others:
        with tempfile.TemporaryDirectory() as workdir:
            store = open_results(url.format(tmp=workdir))
            try:
                bench(name, store, args.records, args.expired)
            finally:
                if hasattr(store, "drop"):
                    store.drop()
                store.close()
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
