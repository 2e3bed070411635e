"""Benchmark: the demo pipeline in embedded mode vs the hand-written pandas script.

Both do read -> clean -> write Parquet of the NYC flights 2013 table (336,776 rows), in the
same run, alternating, several times; the script prints medians and the throughput ratio
(pandas time / toolkit time: 1.0 means as fast as the hand-written script).

Two views:
  * in process: the work alone (source read, shard planning, every batch step, state
    writes) without interpreter start-up and imports;
  * whole command: `etl run --shards 20` vs `python bench/pandas_baseline.py`, as a user
    sees them.
Then a per-step profile of one sequential pass, to show where the time goes.

    python bench/bench_embedded.py [--repeat 5] [--shards 20] [--processes N] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pandas_baseline import clean_flights  # noqa: E402
import etl  # noqa: E402
from etl.runtime.context import RunContext  # noqa: E402
from etl.demo import flights_csv, pipeline  # noqa: E402
from etl.stores import Stores  # noqa: E402
from etl.stores.objects import open_objects  # noqa: E402
from etl.runtime.runs import open_run  # noqa: E402
from etl.stores.state import open_state  # noqa: E402


def pandas_in_process(workdir: Path) -> float:
    started = time.perf_counter()
    clean_flights(pd.read_csv(flights_csv())).to_parquet(workdir / "baseline.parquet", index=False)
    return time.perf_counter() - started


def toolkit_in_process(workdir: Path, *, shards: int, processes: int, threads: int) -> float:
    os.environ["ETL_DEMO_OUTPUT"] = str(workdir / "out")
    started = time.perf_counter()
    stores = Stores(open_state(f"sqlite:///{workdir}/state.db"),
                    open_objects(f"file://{workdir}/objects"))
    result = etl.run(pipeline(), spec="demo", shards=shards, fresh=True, stores=stores,
                     processes=processes, threads=threads)
    elapsed = time.perf_counter() - started
    assert result.completed, "benchmark run did not complete"
    return elapsed


def command(args: list[str], workdir: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["ETL_DEMO_OUTPUT"] = str(workdir / "out")
    started = time.perf_counter()
    subprocess.run(args, cwd=workdir, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def alternate(repeat: int, baseline: Callable[[Path], float],
              toolkit: Callable[[Path], float]) -> tuple[list[float], list[float]]:
    base, ours = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            base.append(baseline(Path(a)))
            ours.append(toolkit(Path(b)))
    return base, ours


def report(title: str, base: list[float], ours: list[float], rows: int) -> None:
    b, o = statistics.median(base), statistics.median(ours)
    print(f"\n{title}")
    print(f"  pandas script : median {b:.3f} s  ({rows / b:,.0f} rows/s)  runs {fmt(base)}")
    print(f"  etl embedded  : median {o:.3f} s  ({rows / o:,.0f} rows/s)  runs {fmt(ours)}")
    print(f"  throughput ratio etl/pandas = {b / o:.2f}x")


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def profile_steps(workdir: Path, *, shards: int) -> None:
    """One sequential pass over every batch, timing each part (no threads, no broker)."""
    import etl.runtime.batches as steps
    import etl.core.parquet as parquet
    import stages

    spent: collections.Counter[str] = collections.Counter()

    def timed(name: str, fn: Callable) -> Callable:  # type: ignore[type-arg]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    started = time.perf_counter()
    demo = pipeline().with_shards(shards)
    state = open_state(f"sqlite:///{workdir}/state.db")
    run, _ = open_run(state, demo, spec="demo", fresh=True)
    spent["open run: read source, hash, fit plan"] = time.perf_counter() - started
    objects = open_objects(f"file://{workdir}/objects")
    ctx = RunContext.build(run, demo, state, objects)
    originals = (steps.to_parquet_bytes, steps.from_parquet_bytes, steps.run_stages)
    steps.to_parquet_bytes = timed("encode parquet", parquet.to_parquet_bytes)
    steps.from_parquet_bytes = timed("decode parquet", parquet.from_parquet_bytes)
    steps.run_stages = timed("stages (pandas)", stages.run_stages)
    demo.source.read_batch = timed("slice source batch", demo.source.read_batch)  # type: ignore[method-assign]
    demo.sink.write_parquet = timed("write sink file", demo.sink.write_parquet)  # type: ignore[attr-defined]
    objects.put_bytes = timed("write objects", objects.put_bytes)  # type: ignore[method-assign]
    for name in ("record_fetch", "complete_stage", "get_checkpoint", "is_done", "get_payload",
                 "mark_done"):
        setattr(state, name, timed("state store", getattr(state, name)))
    try:
        for checkpoint in state.list_checkpoints(run.run_id):
            batch, more = 0, True
            while more:
                outcome = steps.fetch(ctx, checkpoint.shard, batch)
                steps.clean(ctx, checkpoint.shard, batch)
                steps.load(ctx, checkpoint.shard, batch)
                more, batch = outcome.fetch_next, batch + 1
    finally:
        steps.to_parquet_bytes, steps.from_parquet_bytes, steps.run_stages = originals
    total = time.perf_counter() - started
    print(f"\nwhere the time goes (one sequential pass, {total:.3f} s):")
    for name, seconds in spent.most_common():
        print(f"  {name:40s} {seconds:6.3f} s  {100 * seconds / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--processes", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = len(pd.read_csv(flights_csv(), usecols=["year"]))
    print(f"demo table: {rows:,} rows; {args.repeat} alternating runs each; "
          f"{args.shards} shards, {args.processes} worker processes x {args.threads} threads")
    base, ours = alternate(args.repeat, pandas_in_process,
                           lambda d: toolkit_in_process(d, shards=args.shards, processes=args.processes,
                                                        threads=args.threads))
    report("in process (work only)", base, ours, rows)
    etl = [sys.executable, "-m", "cli.main", "run", "--shards", str(args.shards), "--fresh",
           "--no-progress", "--processes", str(args.processes), "--threads", str(args.threads)]
    script = [sys.executable, str(ROOT / "bench" / "pandas_baseline.py"), "baseline.parquet"]
    base, ours = alternate(args.repeat, lambda d: command(script, d), lambda d: command(etl, d))
    report("whole command (with interpreter start-up and imports)", base, ours, rows)
    with tempfile.TemporaryDirectory() as workdir:
        profile_steps(Path(workdir), shards=args.shards)


if __name__ == "__main__":
    main()
