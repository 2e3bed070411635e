"""DuckDB doing the demo's cleaning (bench/pandas_baseline.clean_flights) in SQL, to Parquet.

read_csv_auto -> snake-case column names, drop rows with no dep_time, sched_dep = the local
New York time of year/month/day/sched_dep_time as a UTC instant (a local time that does not
exist or is ambiguous at a DST change is dropped, as pandas' tz_localize(..., "NaT") does),
integer casts, trim + upper of the codes, dedupe on KEY keeping the first row in file order
-> COPY TO one Parquet file. DuckDB uses every core. It cannot read .zip: give it a plain or
.gz CSV (the bench unzips the demo's file once into its cache).

    python bench/duckdb_flights.py INPUT.csv OUTPUT.parquet
"""

from __future__ import annotations

import sys
import time

import duckdb

KEY = ["carrier", "flight", "origin", "sched_dep"]
INTEGERS = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", "flight", "distance"]
CODES = ["carrier", "origin", "dest", "tailnum"]
ZONE = "America/New_York"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def snake(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def cleaning_sql(con: duckdb.DuckDBPyConnection, source: str) -> str:
    """The SELECT that cleans `source` (a read_csv_auto(...) expression)."""
    columns = [row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()]
    renamed = ", ".join(f"{quote(c)} AS {quote(snake(c))}" for c in columns)
    out = []
    for column in (snake(c) for c in columns):
        if column in INTEGERS:
            out.append(f"CAST({quote(column)} AS BIGINT) AS {quote(column)}")
        elif column in CODES:
            out.append(f"upper(trim({quote(column)})) AS {quote(column)}")
        else:
            out.append(quote(column))
    local = ("make_timestamp(year, month, day, sched_dep_time // 100, sched_dep_time % 100, 0)")
    key = ", ".join(quote(k) for k in KEY)
    return f"""
        WITH raw AS (SELECT {renamed}, row_number() OVER () AS _rn FROM {source}),
        kept AS (SELECT *, {local} AS _local FROM raw WHERE dep_time IS NOT NULL),
        timed AS (SELECT *, timezone('{ZONE}', _local) AS _utc FROM kept),
        valid AS (
            SELECT * EXCLUDE (_local, _utc), _utc AS sched_dep FROM timed
            WHERE timezone('{ZONE}', _utc) = _local                      -- exists
              AND timezone('{ZONE}', _utc - INTERVAL 1 HOUR) <> _local   -- not ambiguous
              AND timezone('{ZONE}', _utc + INTERVAL 1 HOUR) <> _local),
        cleaned AS (SELECT {", ".join(out)}, sched_dep, _rn FROM valid)
        SELECT * EXCLUDE (_rn) FROM cleaned
        QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _rn) = 1
    """  # no ORDER BY on the whole: the rows' order in the file is not part of the cleaning


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    source, output = argv[1], argv[2]
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    scan = "read_csv_auto('{}', nullstr = 'NA')".format(source.replace("'", "''"))
    target = output.replace("'", "''")
    ((rows,),) = con.execute(f"COPY ({cleaning_sql(con, scan)}) TO '{target}' (FORMAT parquet)"
                             ).fetchall()
    elapsed = time.perf_counter() - started
    print(f"{rows} rows in {elapsed:.3f} s ({rows / elapsed:,.0f} rows/s) -> {output}")


if __name__ == "__main__":
    main(sys.argv)
