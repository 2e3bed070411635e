"""`make bench`: every figure of the performance goals, in one run.

Sections (all by default; pick with --only, comma-separated):

  embedded     the demo (336,776 rows): `etl run --shards 20 --fresh --no-progress` vs the
               hand-written pandas script (bench/pandas_baseline.py), DuckDB
               (bench/duckdb_flights.py) and dlt (bench/dlt_flights.py) as whole commands;
               then the same work in process (no interpreter start-up or imports), each
               repeat in a fresh process so that no parsed source is reused.
  tenx         the same commands on the 10x demo (3,367,760 rows: bench/tenx.py, a CSV made
               once in a cache folder), the toolkit as `etl run -p bench.tenx:pipeline`.
  distributed  2 `etl worker --threads 2 --preload ...` processes on RabbitMQ and on Redis,
               timed from `etl run --fresh --wait` to completion, on the demo and the 10x
               demo, in the same alternation as the pandas script of that data set
               (--distributed-on demo or tenx for one of them).
  noop         no-op messages through a raw Dramatiq actor vs the toolkit's load actor on
               an already loaded batch, per broker, the two alternated over the rounds
               (--noop adds it to an --only list).
  help         `etl --help` vs a bare `python -c pass` (wall, median).
  overhead     the demo at 3 batch sizes (about 20, 80 and 180 batches): CPU per extra
               batch of the whole command, of `stages.run_stages` alone over the same
               slices in process, and their difference, the toolkit's own cost per batch;
               then where it goes: the profile pass (below) at the largest and smallest
               batch size, per step; `etl run` in one process and thread at the same sizes,
               whose slope less the profile pass's is the records, leases and broker;
               and how the default processes and threads compare with it.
  profile      CPU per step of one sequential pass through the real batch steps
               (etl.runtime.batches fetch/clean/load), source read, parse, fingerprint and
               plan included (in a fresh process: nothing cached); --write-readme puts the
               table into README.md between the bench:profile markers.

Every command is timed as a child process: wall time, and CPU time (user + system) from
os.wait4, so the CPU of the processes it forked and waited for is included. Contenders run
alternately (A, B, C, A, B, C, ...), each in a fresh temporary folder; figures are medians.
Ratios are (other's time / the toolkit's time): above 1 the toolkit is faster. Each goal
is printed next to its figure with PASS or FAIL, and again at the end.

    python bench/bench_all.py [--repeat 5 | --quick] [--only SECTIONS] [--write-readme]
                              [--brokers rabbitmq,redis] [--distributed-on demo,tenx]
                              [--noop] [--shards 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib
import inspect
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import tenx  # noqa: E402
from bench.scratch import SCRATCH  # noqa: E402

PY = sys.executable
_ETL_SCRIPT = Path(sys.executable).parent / "etl"
ETL = [str(_ETL_SCRIPT)] if _ETL_SCRIPT.exists() else [PY, "-m", "cli.main"]
BENCH = ROOT / "bench"
SECTIONS = ("embedded", "tenx", "distributed", "noop", "help", "overhead", "profile")
URLS = {"rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F", "redis": "redis://127.0.0.1:6379/0"}
README = ROOT / "README.md"
MARK_START, MARK_END = "<!-- bench:profile:start -->", "<!-- bench:profile:end -->"
BATCH_TARGETS = (20, 80, 180)


class BenchError(Exception):
    """A contender that could not be measured (its reason is printed, the rest goes on)."""


# -- measuring commands ------------------------------------------------------------------

@dataclasses.dataclass
class Sample:
    wall: float
    cpu: float
    sys: float = 0.0  # the kernel's share of `cpu`, where known


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without ETL_* settings (each command gets the defaults), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    env.update(extra)
    return env


def run_timed(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 900) -> Sample:
    """Run `args` to its end: (wall s, CPU s of it and every child it waited for)."""
    out, err = cwd / ".bench-stdout", cwd / ".bench-stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (err.read_text(errors="replace").strip().splitlines() or
                out.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-3:]
        raise BenchError(f"`{' '.join(Path(a).name if '/' in a else a for a in args)}` exited "
                         f"{proc.returncode}: {' | '.join(tail)}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_stime)


def proc_cpu(pid: int) -> float:
    """CPU seconds so far of a live process and its live descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pids, seen = 0.0, [pid], set()
    while pids:
        current = pids.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
            for task in Path(f"/proc/{current}/task").iterdir():
                pids += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet")
                                                 if "/.dlt/" not in str(p))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def median(values: list[float]) -> float:
    return statistics.median(values)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- goals -------------------------------------------------------------------------------

GOALS: list[tuple[str, str, bool]] = []
FAILED: list[str] = []  # sections that could not run


def goal(label: str, value: float, *, at_least: float | None = None,
         at_most: float | None = None, unit: str = "x") -> str:
    """'goal >= 0.9x: PASS', recorded for the summary."""
    def shown_target(target: float) -> str:
        text = f"{target:g}"
        return text if "." in text else f"{text}.0"

    if at_least is not None:
        ok, text = value >= at_least, f">= {shown_target(at_least)}{unit}"
    else:
        assert at_most is not None
        ok, text = value <= at_most, f"<= {shown_target(at_most)}{unit}"
    shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.3f}{unit}"
    GOALS.append((label, f"{shown} (goal {text})", ok))
    return f"goal {text}: {'PASS' if ok else 'FAIL'}"


# -- data sets and contenders ------------------------------------------------------------

@dataclasses.dataclass
class Dataset:
    name: str
    rows: int
    csv: Path                 # a plain CSV of it (DuckDB cannot read the demo's .zip)
    script_input: list[str]   # the pandas script's and dlt's input arguments
    etl_pipeline: list[str]   # `etl run` arguments naming the pipeline
    preload: str              # the pipeline spec workers preload
    env: dict[str, str]


def demo_dataset(cache: Path) -> Dataset:
    csv = tenx.plain_demo_csv(cache)
    return Dataset("demo", count_rows(csv), csv, [], [], "demo", {})


def tenx_dataset(cache: Path) -> Dataset:
    csv = tenx.tenx_csv(cache)
    return Dataset("10x demo", count_rows(csv), csv, ["--input", str(csv)],
                   ["-p", "bench.tenx:pipeline"], "bench.tenx:pipeline",
                   {"ETL_BENCH_TENX": str(csv), "PYTHONPATH": str(ROOT)})


def warm(ds: Dataset) -> None:
    """Read the inputs once, so that the first contender does not pay for a cold page cache."""
    from etl.demo import flights_csv

    for path in (ds.csv, flights_csv()):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def count_rows(csv: Path) -> int:
    with csv.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b"")) - 1


@dataclasses.dataclass
class Contender:
    name: str
    measure: Callable[[Path], Sample]       # in a fresh folder
    output: Callable[[Path], Path] | None   # where its rows are, to count them once
    skip: str | None = None                 # why it is not measured
    samples: list[Sample] = dataclasses.field(default_factory=list)
    rows_out: int | None = None
    failed: str | None = None


def script_contender(ds: Dataset) -> Contender:
    def measure(work: Path) -> Sample:
        return run_timed([PY, str(BENCH / "pandas_baseline.py"), str(work / "out.parquet"),
                          *ds.script_input], cwd=work, env=clean_env())
    return Contender("pandas script", measure, lambda work: work / "out.parquet")


def etl_contender(ds: Dataset, shards: int) -> Contender:
    def measure(work: Path) -> Sample:
        env = clean_env(ETL_DEMO_OUTPUT=str(work / "out"), **ds.env)
        return run_timed([*ETL, "run", *ds.etl_pipeline, "--shards", str(shards), "--fresh",
                          "--no-progress"], cwd=work, env=env)
    return Contender("etl run", measure, lambda work: work / "out")


def missing(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); pip install -e '.[bench]'"
    return None


def duckdb_contender(ds: Dataset) -> Contender:
    def measure(work: Path) -> Sample:
        return run_timed([PY, str(BENCH / "duckdb_flights.py"), str(ds.csv),
                          str(work / "out.parquet")], cwd=work, env=clean_env())
    return Contender("duckdb", measure, lambda work: work / "out.parquet", skip=missing("duckdb"))


def dlt_contender(ds: Dataset) -> Contender:
    def measure(work: Path) -> Sample:
        return run_timed([PY, str(BENCH / "dlt_flights.py"), str(work / "out"),
                          *ds.script_input], cwd=work, env=clean_env())
    return Contender("dlt", measure, lambda work: work / "out", skip=missing("dlt"))


def broker_reason(kind: str) -> str | None:
    port = {"rabbitmq": 5672, "redis": 6379}[kind]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        return f"{kind} does not answer on 127.0.0.1:{port} ({exc})"
    return None


def broker_contender(ds: Dataset, kind: str, shards: int) -> Contender:
    def measure(work: Path) -> Sample:
        url, queue = URLS[kind], f"bench-all-{uuid.uuid4().hex[:8]}"
        env = clean_env(ETL_BROKER_URL=url, ETL_QUEUE=queue, ETL_DEMO_OUTPUT=str(work / "out"),
                        PYTHONPATH=str(ROOT))
        env.update(ds.env)
        logs = [work / f"worker-{i}.log" for i in range(2)]
        workers = [subprocess.Popen([*ETL, "-v", "worker", "--threads", "2", "--preload",
                                     ds.preload], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log.open("w"))
                   for log in logs]
        try:
            deadline = time.monotonic() + 300  # until both have parsed the source
            while True:
                texts = [log.read_text(errors="replace") for log in logs]
                if all("preloaded" in t for t in texts):
                    break
                for worker, text in zip(workers, texts):
                    if worker.poll() is not None or "could not preload" in text:
                        raise BenchError(f"worker did not start: {text.strip()[-300:]}")
                if time.monotonic() > deadline:
                    raise BenchError("workers did not preload within 300 s")
                time.sleep(0.05)
            before = sum(proc_cpu(w.pid) for w in workers)
            sample = run_timed([*ETL, "run", *ds.etl_pipeline, "--shards", str(shards),
                                "--fresh", "--wait", "--no-progress"], cwd=work, env=env)
            after = sum(proc_cpu(w.pid) for w in workers)
            return Sample(sample.wall, sample.cpu + after - before)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            drop_queue(url, queue)
    return Contender(f"etl 2 workers {kind}", measure, lambda work: work / "out",
                     skip=broker_reason(kind))


#: (broker URL, queue) that could not be deleted yet (a broker restarting): tried again at the end.
UNDROPPED: list[tuple[str, str]] = []


def drop_queue(url: str, queue: str) -> bool:
    """Delete a bench queue (with its delay and dead-letter queues); False if it could not."""
    from bench.bench_distributed import drop_queues

    try:
        drop_queues(url, [queue])
    except Exception as exc:  # noqa: BLE001 - a broker down now; tried again at the end
        print(f"  ! could not delete queue {queue} yet: {type(exc).__name__}: {exc}")
        if (url, queue) not in UNDROPPED:
            UNDROPPED.append((url, queue))
        return False
    return True


def alternate(contenders: list[Contender], repeat: int) -> None:
    """Each repeat runs every contender once, in order, each in a fresh folder."""
    live = [c for c in contenders if c.skip is None]
    for round_ in range(repeat):
        for contender in live:
            if contender.failed:
                continue
            for attempt in (1, 2):  # once more after a pause: a broker may be restarting
                with SCRATCH.folder() as work:  # kept to the end (bench.scratch: why)
                    try:
                        contender.samples.append(contender.measure(work))
                    except BenchError as exc:
                        print(f"  ! {contender.name}: {exc}", flush=True)
                        if attempt == 2:
                            contender.failed = str(exc)
                        else:
                            time.sleep(10)
                        continue
                    if round_ == 0 and contender.output is not None:
                        try:
                            contender.rows_out = parquet_rows(contender.output(work))
                        except Exception as exc:  # noqa: BLE001 - the count is a check only
                            print(f"  ! {contender.name}: cannot count its rows: {exc}")
                    break
        done = [f"{c.name} {c.samples[-1].wall:.2f}s" for c in live if c.samples
                and not c.failed and len(c.samples) == round_ + 1]
        print(f"  round {round_ + 1}/{repeat}: {', '.join(done)}", flush=True)


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def table(ds: Dataset, contenders: list[Contender]) -> None:
    print(f"  {'':24s} {'wall s':>8s} {'CPU s':>8s} {'rows/s (wall)':>14s} {'rows out':>11s}"
          "   wall of each run")
    for c in contenders:
        if c.skip or c.failed or not c.samples:
            print(f"  {c.name:24s} skipped: {c.skip or c.failed}")
            continue
        wall, cpu = median([s.wall for s in c.samples]), median([s.cpu for s in c.samples])
        rows = f"{c.rows_out:,}" if c.rows_out is not None else "?"
        print(f"  {c.name:24s} {wall:8.2f} {cpu:8.2f} {ds.rows / wall:14,.0f} {rows:>11s}   "
              f"{fmt([s.wall for s in c.samples])}")
    expected = {c.rows_out for c in contenders if c.rows_out is not None}
    if len(expected) > 1:
        print(f"  ! the contenders wrote different row counts: {sorted(expected)}")


def medians(c: Contender) -> Sample | None:
    if c.skip or c.failed or not c.samples:
        return None
    return Sample(median([s.wall for s in c.samples]), median([s.cpu for s in c.samples]))


def ratio_line(ours: Contender, other: Contender, *, goal_wall: float | None = None,
               goal_cpu_at_most: float | None = None, label: str = "") -> None:
    a, b = medians(other), medians(ours)
    if a is None or b is None:
        return
    text = (f"    {other.name} / {ours.name}: wall {a.wall / b.wall:.2f}x, "
            f"CPU {a.cpu / b.cpu:.2f}x")
    if goal_wall is not None:
        text += f"   [wall {goal(f'{label}: {ours.name} vs {other.name}, wall', a.wall / b.wall, at_least=goal_wall)}]"
    print(text)
    if goal_cpu_at_most is not None:
        share = b.cpu / a.cpu
        print(f"    {ours.name} CPU = {share:.2f}x the {other.name}'s   "
              f"[{goal(f'{label}: {ours.name} CPU / {other.name} CPU', share, at_most=goal_cpu_at_most)}]")


# -- sections ----------------------------------------------------------------------------

def compare_dataset(ds: Dataset, args: argparse.Namespace, *, tools: bool,
                    brokers: list[str]) -> None:
    script = script_contender(ds)
    ours = etl_contender(ds, args.shards)
    others = [duckdb_contender(ds), dlt_contender(ds)] if tools else []
    workers = [broker_contender(ds, kind, args.shards) for kind in brokers]
    contenders = [script] + ([ours] if tools else []) + others + workers
    warm(ds)
    names = ", ".join(c.name for c in contenders)
    print(f"\n== {ds.name}: {ds.rows:,} rows in; {args.repeat} rounds of: {names} "
          f"(load {load()}) ==", flush=True)
    for c in contenders:
        if c.skip:
            print(f"  {c.name}: skipped: {c.skip}")
    alternate(contenders, args.repeat)
    print(f"\n{ds.name}: medians of {args.repeat} (whole commands; CPU = user + system of the "
          "command and its children; workers' CPU counted while the run is timed)")
    table(ds, contenders)
    print("  ratios (other's time / the toolkit's time; > 1: the toolkit is faster):")
    tenfold = ds.name != "demo"
    if tools:
        ratio_line(ours, script, goal_wall=1.3 if tenfold else 0.9,
                   goal_cpu_at_most=1.15 if tenfold else None, label=ds.name)
        for other in others:
            ratio_line(ours, other, goal_wall=1.3 if tenfold and other.name == "dlt" else None,
                       label=ds.name)
    for worker in workers:
        ratio_line(worker, script, goal_wall=1.3 if tenfold else 1.0, label=ds.name)
        if tools:
            ratio_line(worker, ours, label=ds.name)


def child_json(kind: str, work: Path, shards: int) -> Sample:
    """Run `--child kind` in a fresh interpreter: its own timing of the work, after imports."""
    run_timed([PY, str(Path(__file__)), "--child", kind, "--workdir", str(work),
               "--shards", str(shards)], cwd=work, env=clean_env(ETL_DEMO_OUTPUT=str(work / "out")))
    data = json.loads((work / ".bench-stdout").read_text().strip().splitlines()[-1])
    return Sample(data["wall"], data["cpu"])


def in_process(args: argparse.Namespace) -> None:
    print(f"\n== demo in process: the work alone, each repeat in a fresh interpreter after its "
          f"imports (no source parsed before), {args.repeat} rounds (load {load()}) ==",
          flush=True)
    script = Contender("pandas script", lambda w: child_json("pandas", w, args.shards), None)
    ours = Contender("etl.run", lambda w: child_json("etl", w, args.shards), None)
    alternate([script, ours], args.repeat)
    table(demo_dataset(args.cache), [script, ours])
    print("  ratios (other's time / the toolkit's time; > 1: the toolkit is faster):")
    ratio_line(ours, script)


def help_section(args: argparse.Namespace) -> None:
    n = max(10, 3 * args.repeat)
    print(f"\n== `etl --help` vs `python -c pass`, {n} alternating runs (load {load()}) ==",
          flush=True)
    bare, ours = [], []
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        work = Path(tmp)
        for _ in range(n):
            bare.append(run_timed([PY, "-c", "pass"], cwd=work, env=clean_env()))
            ours.append(run_timed([*ETL, "--help"], cwd=work, env=clean_env()))
    b, o = median([s.wall for s in bare]), median([s.wall for s in ours])
    print(f"  python -c pass : median {b:.3f} s wall, {median([s.cpu for s in bare]):.3f} s CPU")
    print(f"  etl --help     : median {o:.3f} s wall, {median([s.cpu for s in ours]):.3f} s CPU"
          f"   [{goal('etl --help wall', o, at_most=0.15, unit=' s')}]")
    print(f"  start-up beyond the bare interpreter: {o - b:.3f} s")


def batch_plan(shards: int) -> tuple[Any, list[Any], Any, Any]:
    """The demo pipeline, its source table, shard of each row (as `etl run` assigns them)."""
    import numpy as np

    from etl.demo import pipeline

    demo = pipeline().with_shards(shards)
    plan = demo.shards
    columns = getattr(plan, "columns", None) or [getattr(plan, "column")]
    columns = [columns] if isinstance(columns, str) else list(columns)
    sample = demo.source.sample(columns)
    fitted = plan.fit(sample)
    assigned = np.asarray(fitted.assign(sample), dtype=np.int64)
    return demo, fitted, assigned, demo.source.table()


def batches_for(sizes: Any, batch_size: int) -> int:
    return int(sum(-(-int(n) // batch_size) for n in sizes if n))


def pick_batch_size(sizes: Any, target: int) -> int:
    """The batch size whose batch count over the shards is nearest `target`."""
    low, high = 1, int(max(sizes))
    while low < high:  # smallest size giving at most `target` batches
        mid = (low + high) // 2
        if batches_for(sizes, mid) <= target:
            high = mid
        else:
            low = mid + 1
    return min((low, max(1, low - 1)), key=lambda s: abs(batches_for(sizes, s) - target))


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def overhead_section(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    import stages

    demo, plan, assigned, source_table = batch_plan(args.shards)
    sizes = np.bincount(assigned, minlength=plan.shards)
    chosen = [pick_batch_size(sizes, t) for t in BATCH_TARGETS]
    counts = [batches_for(sizes, s) for s in chosen]
    print(f"\n== per-batch overhead: the demo, {args.shards} shards, batch sizes "
          f"{', '.join(f'{s:,} ({c} batches)' for s, c in zip(chosen, counts))}; "
          f"{args.repeat} rounds (load {load()}) ==", flush=True)
    runs = [Contender(f"etl run, {c} batches",
                      functools.partial(lambda w, s: run_timed(
                          [*ETL, "run", "--shards", str(args.shards), "--fresh", "--no-progress",
                           "--batch-size", str(s)], cwd=w,
                          env=clean_env(ETL_DEMO_OUTPUT=str(w / "out"))), s=size), None)
            for size, c in zip(chosen, counts)]
    alternate(runs, args.repeat)
    if any(r.failed for r in runs):
        return
    # the same slices in process: rows of each shard in file order, cut every `size` rows
    order = np.argsort(assigned, kind="stable")
    starts = np.searchsorted(assigned[order], np.arange(plan.shards + 1), side="left")
    run_stages = getattr(stages, "run_stages")
    offset = 1 << 40  # as etl.runtime.batches labels rows while stages run

    def stage_cpu(size: int) -> float:
        frames = []
        for shard in range(plan.shards):
            rows = order[starts[shard]:starts[shard + 1]]
            for begin in range(0, len(rows), size):
                picked = rows[begin:begin + size]
                frame = source_table.take(pa.array(picked, type=pa.int64())).to_pandas()
                frames.append(frame.set_axis(pd.Index(np.arange(len(frame)) + offset)))
        started = time.process_time()
        for frame in frames:
            run_stages(frame, demo.stages)
        return time.process_time() - started

    stage_runs: dict[int, list[float]] = {s: [] for s in chosen}
    for _ in range(args.repeat):
        for size in chosen:
            stage_runs[size].append(stage_cpu(size))
    totals = [median([s.cpu for s in r.samples]) for r in runs]
    walls = [median([s.wall for s in r.samples]) for r in runs]
    staged = [median(stage_runs[s]) for s in chosen]
    print(f"  {'batches':>8s} {'batch size':>11s} {'etl run CPU s':>14s} {'wall s':>8s} "
          f"{'run_stages CPU s':>17s}")
    for c, s, t, w, st in zip(counts, chosen, totals, walls, staged):
        print(f"  {c:8d} {s:11,d} {t:14.3f} {w:8.3f} {st:17.3f}")
    total_slope, stage_slope = slope(counts, totals), slope(counts, staged)
    kernel = slope(counts, [median([s.sys for s in r.samples]) for r in runs])
    print(f"  slope, whole command      : {1000 * total_slope:7.2f} ms CPU per extra batch "
          f"(wall {1000 * slope(counts, walls):.2f} ms; kernel time {1000 * kernel:.2f} ms of "
          "the CPU: file creation, fsync, SQLite's locks and writes, thread wake-ups)")
    print(f"  slope, run_stages alone   : {1000 * stage_slope:7.2f} ms CPU per extra batch")
    overhead = 1000 * (total_slope - stage_slope)
    print(f"  toolkit overhead per batch = total slope - stages slope = {overhead:.2f} ms CPU"
          f"   [{goal('per-batch overhead of the toolkit, CPU', overhead, at_most=5.0, unit=' ms')}]")
    rounds = min(len(r.samples) for r in runs)
    if rounds > 1:  # the machine's noise: the same figure from each round alone
        each = sorted(slope(counts, [r.samples[i].cpu for r in runs])
                      - slope(counts, [stage_runs[s][i] for s in chosen]) for i in range(rounds))
        print(f"  the same from each round alone: {1000 * each[0]:.2f} to {1000 * each[-1]:.2f} ms "
              f"(a change smaller than that spread needs more rounds, or a microbenchmark)")
    overhead_steps(args, chosen[0], chosen[-1], total_slope)


def overhead_steps(args: argparse.Namespace, large: int, small: int, total: float) -> None:
    """Where the toolkit's cost per batch goes: the profile pass (one process, the batch
    steps called in turn: no broker, messages, results, leases or second process) at the
    largest and the smallest batch size, medians per step; each step's CPU per extra batch.
    Alternated with them, `etl run` in one process and one thread at the same sizes: its
    slope less the profile pass's is what the result records, the leases and Dramatiq (one
    message per shard in embedded mode) cost per batch (the same steps, with and without
    them); and how the default processes and threads (`total`: the whole command's slope)
    compare with that."""
    runs: dict[int, list[dict[str, Any]]] = {large: [], small: []}
    single: dict[int, list[float]] = {large: [], small: []}
    try:
        for _ in range(max(3, args.repeat // 2 + 1)):
            for size in (large, small):
                runs[size].append(profile_child(args.shards, size))
                with SCRATCH.folder() as work:
                    single[size].append(run_timed(
                        [*ETL, "run", "--shards", str(args.shards), "--fresh", "--no-progress",
                         "--batch-size", str(size), "--processes", "1", "--threads", "1"],
                        cwd=work, env=clean_env(ETL_DEMO_OUTPUT=str(work / "out"))).cpu)
    except BenchError as exc:
        print(f"  ! per-step breakdown failed: {exc}")
        return
    counts = {size: runs[size][0]["batches"] for size in runs}
    extra = counts[small] - counts[large]
    if extra <= 0:
        return

    def per_step(size: int) -> dict[str, float]:
        each = [{name: cpu for name, cpu, _ in data["steps"]} for data in runs[size]]
        names = set().union(*each)
        return {name: median([steps.get(name, 0.0) for steps in each]) for name in names}

    few, many = per_step(large), per_step(small)
    slopes = {name: (many.get(name, 0.0) - few.get(name, 0.0)) / extra
              for name in set(few) | set(many) if name != "stages (pandas)"}
    steps = sum(slopes.values())
    passes = (median([d["total_cpu"] for d in runs[small]])
              - median([d["total_cpu"] for d in runs[large]])) / extra
    alone = (median(single[small]) - median(single[large])) / extra
    print(f"  where it goes (profile pass: {counts[large]} vs {counts[small]} batches, "
          f"{len(runs[large])} runs each, medians; ms CPU per extra batch):")
    for name, value in sorted(slopes.items(), key=lambda kv: -kv[1]):
        if abs(value) >= 0.00005:
            print(f"    {1000 * value:6.2f}  {name}")
    print(f"    {1000 * steps:6.2f}  = the batch steps in one process, without the stages")
    print(f"  one process, one thread: `etl run` {1000 * alone:.2f} ms per extra batch = the "
          f"profile pass's {1000 * passes:.2f} (the steps and the stages among them) + "
          f"{1000 * (alone - passes):+.2f} for the result records, leases, the actor wrapper "
          "and Dramatiq (a message per shard)")
    print(f"  the default processes and threads: {1000 * total:.2f} ms per extra batch "
          f"({1000 * (total - alone):+.2f} vs one process and thread)")


def profile_child(shards: int, batch_size: int | None = None) -> dict[str, Any]:
    """The figures of `profile_pass`, run in a fresh process (nothing cached)."""
    with SCRATCH.folder() as work:
        size = ["--batch-size", str(batch_size)] if batch_size else []
        run_timed([PY, str(Path(__file__)), "--child", "profile", "--workdir", str(work),
                   "--shards", str(shards), *size], cwd=work,
                  env=clean_env(ETL_DEMO_OUTPUT=str(work / "out")))
        return json.loads((work / ".bench-stdout").read_text().strip().splitlines()[-1])


def profile_section(args: argparse.Namespace) -> None:
    print(f"\n== per-step profile: one sequential pass over every batch of the demo "
          f"({args.shards} shards), in a fresh process (load {load()}) ==", flush=True)
    try:
        data = profile_child(args.shards)
    except BenchError as exc:
        print(f"  ! profile failed: {exc}")
        return
    for note in data["skipped"]:
        print(f"  (not wrapped: {note})")
    lines = profile_table(data)
    for line in lines:
        print("  " + line)
    if args.write_readme:
        write_readme(lines, data)


def profile_table(data: dict[str, Any]) -> list[str]:
    total = data["total_cpu"]
    lines = ["| step | CPU s | share | wall s |", "|---|---:|---:|---:|"]
    small = []
    for name, cpu, wall in sorted(data["steps"], key=lambda r: -r[1]):
        if cpu < 0.0005 and wall < 0.0005:
            small.append(name)
            continue
        lines.append(f"| {name} | {cpu:.3f} | {100 * cpu / total:.1f}% | {wall:.3f} |")
    lines.append(f"| **total** | **{total:.3f}** | 100% | {data['total_wall']:.3f} |")
    if small:
        lines += ["", f"Under 0.5 ms: {', '.join(sorted(small))}."]
    return lines


def write_readme(lines: list[str], data: dict[str, Any]) -> None:
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        print(f"  README.md has no {MARK_START} ... {MARK_END} markers: not written")
        return
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    note = (f"Written by `make bench` on {stamp} ({data['rows']:,} rows, {data['batches']} "
            f"batches, {os.cpu_count()} cores, load {load()}); CPU is exclusive of the "
            "steps nested inside.")
    README.write_text(f"{head}{MARK_START}\n{note}\n\n" + "\n".join(lines) + f"\n{MARK_END}{tail}")
    print(f"  written to {README.relative_to(ROOT)}")


def noop_section(brokers: list[str], messages: int, rounds: int) -> None:
    from bench.bench_distributed import noop_throughput

    print(f"\n== no-op messages, 1 in-process worker x 2 threads, {messages} messages, "
          f"{rounds} alternated rounds (load {load()}) ==", flush=True)
    for kind in brokers:
        reason = broker_reason(kind)
        if reason:
            print(f"  {kind}: skipped: {reason}")
            continue
        pairs = noop_throughput(URLS[kind], messages, rounds=rounds)
        ratio = median([mine / raw for raw, mine in pairs])
        verdict = (f"   [{goal('dedup-settled duplicate vs no-op Dramatiq actor, rabbitmq', ratio, at_least=0.9)}]"
                   if kind == "rabbitmq" else "")
        print(f"  {kind}: raw Dramatiq {median([r for r, _ in pairs]):,.0f}/s, etl actors "
              f"(already loaded) {median([m for _, m in pairs]):,.0f}/s (medians) -> "
              f"{ratio:.2f}x (median of the rounds' ratios){verdict}")
        print(f"    each round: {' '.join(f'{m / r:.2f}x' for r, m in pairs)}")


# -- children: the in-process view and the profile ----------------------------------------

def child_main(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    os.chdir(work)
    os.environ["ETL_DEMO_OUTPUT"] = str(work / "out")
    if args.child == "profile":
        print(json.dumps(profile_pass(work, args.shards, args.batch_size)))
        return
    import pandas as pd  # noqa: F401 - imports are not what this view measures
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from bench.pandas_baseline import clean_flights, flights_csv
    if args.child == "etl":
        import etl
        import etl.runtime.batches  # noqa: F401
        import etl.runtime.embedded  # noqa: F401
        import etl.sources.files  # noqa: F401
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, started = time.process_time(), time.perf_counter()
    if args.child == "etl":
        outcome = etl.run("demo", shards=args.shards, fresh=True)
        assert outcome.completed, "the run did not complete"
    else:
        clean_flights(pd.read_csv(flights_csv())).to_parquet(work / "out.parquet", index=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu + (after.ru_utime + after.ru_stime
                                       - children.ru_utime - children.ru_stime)
    print(json.dumps({"wall": wall, "cpu": cpu}))


class Profiler:
    """CPU (process_time: every thread, pyarrow's pools included) and wall per label,
    exclusive of the wrapped calls nested inside."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.stack: list[list[float]] = []
        self.skipped: list[str] = []
        self.undo: list[Callable[[], None]] = []

    def wrap(self, label: str, fn: Callable) -> Callable:  # type: ignore[type-arg]
        if getattr(fn, "__bench_label__", None):
            return fn

        @functools.wraps(fn)
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            cpu, wall = time.process_time(), time.perf_counter()
            self.stack.append([0.0, 0.0])
            try:
                return fn(*a, **k)
            finally:
                inner_cpu, inner_wall = self.stack.pop()
                spent_cpu, spent_wall = time.process_time() - cpu, time.perf_counter() - wall
                self.cpu[label] = self.cpu.get(label, 0.0) + spent_cpu - inner_cpu
                self.wall[label] = self.wall.get(label, 0.0) + spent_wall - inner_wall
                if self.stack:
                    self.stack[-1][0] += spent_cpu
                    self.stack[-1][1] += spent_wall
        wrapper.__bench_label__ = label  # type: ignore[attr-defined]
        return wrapper

    def patch_module(self, module: str) -> None:
        """Wrap each plain function in `module`'s namespace not wrapped yet ("module: name")."""
        try:
            namespace = importlib.import_module(module)
        except ImportError:
            self.skipped.append(module)
            return
        short = module.rsplit(".", 1)[-1]
        for name, value in list(vars(namespace).items()):
            if inspect.isfunction(value) and not getattr(value, "__bench_label__", None):
                self.patch(f"{short}: {name}", module, name)

    def patch(self, label: str, module: str, path: str) -> None:
        """Wrap module.path (a function, a class's function, an object's method), looked
        up by name: a name that no longer exists is skipped and said."""
        try:
            owner: Any = importlib.import_module(module)
            *parents, name = path.split(".")
            for part in parents:
                owner = getattr(owner, part)
            current = (inspect.getattr_static(owner, name) if isinstance(owner, type)
                       else getattr(owner, name))
        except (ImportError, AttributeError):
            self.skipped.append(f"{module}.{path}")
            return
        if isinstance(owner, type) and not inspect.isfunction(current) or not callable(current):
            self.skipped.append(f"{module}.{path} (not a plain function)")
            return
        own = name in getattr(owner, "__dict__", {})
        setattr(owner, name, self.wrap(label, current))
        self.undo.append(lambda: setattr(owner, name, current) if own else delattr(owner, name))

    def patch_object(self, label: str, obj: Any, names: list[str] | None = None,
                     labels: dict[str, str] | None = None) -> None:
        """Wrap the public methods of one object (instance attributes shadow its class's)."""
        for name in names or [n for n in dir(obj) if not n.startswith("_")]:
            method = getattr(obj, name, None)
            if callable(method) and not isinstance(method, type):
                setattr(obj, name, self.wrap((labels or {}).get(name, label), method))


#: (label, module, attribute path): looked up by name at run time; missing ones skipped.
PROFILE_TARGETS = [
    ("source: read file", "etl.sources.files", "FileSource._read_bytes"),
    ("source: unzip", "etl.sources.files", "decompress"),
    ("source: parse CSV", "etl.sources.files", "FileSource._parse"),
    ("source: parse CSV", "etl.sources.files", "parse_csv"),
    ("source: table (cache, window)", "etl.sources.files", "FileSource.table"),
    ("sha256 (source fingerprint, payloads)", "hashlib", "sha256"),
    ("source: sample columns to pandas", "etl.sources.files", "FileSource.sample"),
    ("source: order rows by shard", "etl.sources.files", "FileSource._shard_rows"),
    ("source: gather rows by shard", "etl.sources.files", "ShardRows.gather"),
    ("shard plan: hash rows", "shards.hashing", "HashShards.assign"),
    ("shard plan: fit", "shards.hashing", "HashShards.fit"),
    ("open run: schema, plan, run rows", "etl.runtime.runs", "open_run"),
    ("open run: schema, plan, run rows", "etl.runtime.runs", "source_schema"),
    ("fetch step (rest)", "etl.runtime.batches", "fetch"),
    ("source: slice batch", "etl.sources.files", "FileSource.read_batch"),
    ("encode parquet", "etl.runtime.batches", "to_parquet_bytes"),
    ("encode parquet", "etl.runtime.batches", "frame_to_arrow"),
    ("decode parquet", "etl.runtime.batches", "from_parquet_bytes"),
    ("frame cache", "etl.runtime.batches", "frames.put"),
    ("frame cache", "etl.runtime.batches", "frames.pop"),
    ("read raw batch (arrow -> pandas)", "etl.runtime.batches", "read_frame"),
    ("clean step (rest)", "etl.runtime.batches", "clean"),
    ("clean_frame (labels, lineage, quarantine)", "etl.runtime.batches", "clean_frame"),
    ("schema drift check", "etl.runtime.batches", "_check_schema"),
    ("stages (pandas)", "etl.runtime.batches", "run_stages"),
    ("key check", "etl.runtime.batches", "missing_key"),
    ("row sequence", "etl.runtime.batches", "with_sequence"),
    ("quarantine: kept (in the clean's commit, or an object)", "etl.runtime.batches",
     "keep_quarantine"),
    ("load step (rest)", "etl.runtime.batches", "load"),
    ("raw landing (pointer or copy)", "etl.runtime.batches", "land"),
    ("raw: cut again from source", "etl.runtime.batches", "recut"),
    ("frame cache", "etl.runtime.batches", "cleaned.put"),
    ("frame cache", "etl.runtime.batches", "cleaned.pop"),
    ("staged batch (memory or object)", "etl.runtime.batches", "_staged"),
    ("schema drift check", "etl.runtime.batches", "compare"),
]
#: Every other function of these modules is wrapped too, labelled by its name, so a step
#: that a refactoring adds is measured rather than lumped into its caller.
PROFILE_MODULES = ["etl.runtime.batches", "etl.runtime.raw"]


def profile_pass(work: Path, shards: int, batch_size: int | None = None) -> dict[str, Any]:
    """One sequential pass through the real steps, timed by step; returns the figures.
    `batch_size`: rows per batch (default: the pipeline's, one batch per shard)."""
    import pandas  # noqa: F401 - imports are not what this measures
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from etl.core.arrow_pool import choose_pool

    choose_pool(long_lived=False)  # Arrow's pool as `etl run` sets it
    import etl.runtime.batches as steps
    import etl.runtime.runs as runs
    from etl.demo import pipeline
    from etl.runtime.context import RunContext
    from etl.runtime.embedded import in_process
    from etl.stores.objects import open_objects
    from etl.stores.state import open_state

    prof = Profiler()
    for label, module, path in PROFILE_TARGETS:
        prof.patch(label, module, path)
    for module in PROFILE_MODULES:
        prof.patch_module(module)
    demo = pipeline().with_shards(shards)
    if batch_size:
        demo = dataclasses.replace(demo, batch_size=batch_size)
    state = open_state(f"sqlite:///{work}/state.db")
    objects = open_objects(f"file://{work}/objects")
    prof.patch_object("state store", state)
    prof.patch_object("object store (other)", objects,
                      labels={"put_bytes": "object store: write", "get_bytes": "object store: read"})
    sink = demo.sink
    for name in ("write_parquet", "write_batch"):
        if callable(getattr(sink, name, None)):
            prof.patch_object("sink: write", sink, [name])
    batches = rows = 0
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        run, _ = runs.open_run(state, demo, spec="demo", fresh=True)
        ctx = RunContext.build(run, demo, state, objects)
        in_process(ctx)  # no staged copies, kept keys, shards converted once: as `etl run`
        for checkpoint in state.list_checkpoints(run.run_id):
            batch, more = 0, True
            while more:
                outcome = steps.fetch(ctx, checkpoint.shard, batch)
                steps.clean(ctx, checkpoint.shard, batch)
                steps.load(ctx, checkpoint.shard, batch)
                fetched = getattr(getattr(outcome, "payload", None), "rows", 0)
                batches, rows = batches + bool(fetched), rows + fetched
                more, batch = outcome.fetch_next, batch + 1
        total_cpu, total_wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        for undo in reversed(prof.undo):
            undo()
    accounted_cpu, accounted_wall = sum(prof.cpu.values()), sum(prof.wall.values())
    steps_out = [[name, prof.cpu[name], prof.wall[name]] for name in prof.cpu]
    steps_out.append(["other (loop, contexts, unwrapped code)", max(0.0, total_cpu - accounted_cpu),
                      max(0.0, total_wall - accounted_wall)])
    return {"steps": steps_out, "total_cpu": total_cpu, "total_wall": total_wall,
            "skipped": prof.skipped, "batches": batches, "rows": rows}


# -- main --------------------------------------------------------------------------------

def versions() -> str:
    found = []
    for name in ("pandas", "pyarrow", "dramatiq", "duckdb", "dlt"):
        try:
            found.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            found.append(f"{name} -")
    return ", ".join(found)


#: The project's packages, compiled before anything is timed (`compile_project`).
PACKAGES = ("etl", "stages", "shards", "results", "cli", "bench")


def compile_project() -> None:
    """Bytecode for every module of the project, as an install compiles it (the Makefile
    does at install time). Where PYTHONDONTWRITEBYTECODE is set, as on this machine, a
    module edited since then is otherwise compiled again by every command timed: `etl run`
    imports ~80 of them (all of them compiled each time: ~0.2-0.3 s of CPU on its critical
    path), the pandas script a handful."""
    import compileall

    for package in PACKAGES:
        compileall.compile_dir(str(ROOT / package), quiet=1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per comparison (>= 5 "
                        "for figures worth quoting)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections: {','.join(SECTIONS)} (default: "
                        "all of them)")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    parser.add_argument("--distributed-on", default="demo,tenx",
                        help="data sets of the distributed section: demo, tenx or both")
    parser.add_argument("--noop", action="store_true",
                        help="add the noop section to --only (it is among the defaults)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--write-readme", action="store_true",
                        help="write the profile table into README.md between its markers")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the unzipped demo and the 10x CSV are kept "
                        "(default: ETL_BENCH_CACHE, else ~/.cache/dramatiq-etl-bench)")
    parser.add_argument("--child", choices=("pandas", "etl", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.quick:
        args.repeat = 3
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.noop and "noop" not in only:
        only.append("noop")
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(SECTIONS)}")
    kinds = [b for b in args.brokers.split(",") if b]
    if set(kinds) - set(URLS):
        parser.error(f"--brokers: choose from {', '.join(URLS)}")
    on = {d.strip() for d in args.distributed_on.split(",") if d.strip()}
    if on - {"demo", "tenx"}:
        parser.error("--distributed-on: demo, tenx or both")
    args.cache = args.cache_dir or tenx.cache_dir()
    brokers = kinds if "distributed" in only else []
    demo_brokers = brokers if "demo" in on else []
    tenx_brokers = brokers if "tenx" in on else []
    started = time.perf_counter()
    try:
        run_sections(args, only, brokers=brokers, demo_brokers=demo_brokers,
                     tenx_brokers=tenx_brokers, kinds=kinds, started=started)
    finally:
        SCRATCH.close()


def run_sections(args: argparse.Namespace, only: list[str], *, brokers: list[str],
                 demo_brokers: list[str], tenx_brokers: list[str], kinds: list[str],
                 started: float) -> None:
    """The chosen sections, then the goals met and missed."""
    compile_project()
    print(f"make bench: {', '.join(only)}; {args.repeat} rounds; {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}; {versions()}")
    print(f"load average at start: {load()}   ({datetime.datetime.now():%Y-%m-%d %H:%M:%S})",
          flush=True)

    def section(name: str, run: Callable[[], None]) -> None:
        """A section that fails (the toolkit mid-refactoring, a service gone) says so; the
        others still run."""
        begun = time.perf_counter()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            print(f"\n! section {name} failed: {type(exc).__name__}: {exc}", flush=True)
            FAILED.append(name)
        print(f"  ({name}: {time.perf_counter() - begun:.0f} s)", flush=True)

    if "embedded" in only or demo_brokers:
        section("embedded" if "embedded" in only else "distributed (demo)",
                lambda: compare_dataset(demo_dataset(args.cache), args,
                                        tools="embedded" in only, brokers=demo_brokers))
    if "embedded" in only:
        section("embedded (in process)", lambda: in_process(args))
    if "tenx" in only or tenx_brokers:
        section("tenx" if "tenx" in only else "distributed (10x)",
                lambda: compare_dataset(tenx_dataset(args.cache), args, tools="tenx" in only,
                                        brokers=tenx_brokers))
    if "noop" in only:
        section("noop", lambda: noop_section(kinds, args.messages, args.repeat))
    if "help" in only:
        section("help", lambda: help_section(args))
    if "overhead" in only:
        section("overhead", lambda: overhead_section(args))
    if "profile" in only:
        section("profile", lambda: profile_section(args))

    for url, queue in list(UNDROPPED):
        if drop_queue(url, queue):
            UNDROPPED.remove((url, queue))
    if UNDROPPED:
        print(f"\n! queues left behind (delete them by hand): "
              f"{', '.join(q for _, q in UNDROPPED)}")
    if GOALS:
        print(f"\ngoals ({sum(ok for *_, ok in GOALS)} of {len(GOALS)} met):")
    for label, shown, ok in GOALS:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {shown}")
    if FAILED:
        print(f"! sections that failed (their goals are missing above): {', '.join(FAILED)}")
    print(f"\nload average at end: {load()}; bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
