"""SqlSource against the plain way: a PostgreSQL table to Parquet with `etl run` (embedded,
keyset batches over range shards) vs one pandas.read_sql of the whole table written with
to_parquet, in the same run; medians and the throughput ratio.

    python bench/bench_sql.py [--rows 300000] [--repeat 3] [--url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_table(url: str, rows: int) -> str:
    """A table like an orders table, filled server-side (generate_series)."""
    name = f"bench_sql_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (id bigint PRIMARY KEY, customer text, "
                             "amount double precision, placed timestamptz, paid boolean)"))
        conn.execute(sa.text(f"INSERT INTO {name} SELECT g, 'c' || (g % 5000), g * 0.37, "
                             "now() - g * interval '1 second', g % 3 = 0 "
                             f"FROM generate_series(1, {rows}) g"))
    return name


def plain(url: str, table: str, out: Path) -> float:
    started = time.perf_counter()
    code = textwrap.dedent(f"""
        import pandas as pd, sqlalchemy as sa
        frame = pd.read_sql_table({table!r}, sa.create_engine({url!r}))
        frame.to_parquet({str(out)!r}, index=False)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def ours(url: str, table: str, work: Path) -> float:
    (work / "benchsql.py").write_text(textwrap.dedent(f"""
        from etl import ParquetSink, Pipeline, SqlSource
        from shards import RangeShards

        pipeline = Pipeline(name="benchsql", key=["id"], batch_size=50_000,
                            source=SqlSource({url!r}, table={table!r}, key="id"),
                            shards=RangeShards("id", 20), sink=ParquetSink("out"))
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(work), str(ROOT)])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", "run", "-p", "benchsql:pipeline", "--fresh",
                    "--no-progress"], cwd=work, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default=URL)
    args = parser.parse_args(argv)
    table = make_table(args.url, args.rows)
    try:
        base, mine = [], []
        for _ in range(args.repeat):  # alternating, so drift in the machine hits both alike
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                base.append(plain(args.url, table, Path(a) / "out.parquet"))
                mine.append(ours(args.url, table, Path(b)))
                loaded = sum(len(pd.read_parquet(f)) for f in (Path(b) / "out").glob("*.parquet"))
                assert loaded == args.rows, loaded
        b, o = statistics.median(base), statistics.median(mine)
        print(f"{args.rows:,} rows from PostgreSQL to Parquet, whole commands, medians of "
              f"{args.repeat}:")
        print(f"  pandas read_sql + to_parquet : {b:.2f} s  ({args.rows / b:,.0f} rows/s)  "
              + " ".join(f"{t:.2f}" for t in base))
        print(f"  etl run (SqlSource, 20 shards): {o:.2f} s  ({args.rows / o:,.0f} rows/s)  "
              + " ".join(f"{t:.2f}" for t in mine))
        print(f"  throughput ratio etl/pandas = {b / o:.2f}x")
    finally:
        with sa.create_engine(args.url).begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))


if __name__ == "__main__":
    main(sys.argv[1:])
