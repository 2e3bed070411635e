"""The "10x demo": the NYC flights 2013 table ten times over (3,367,760 rows), for benchmarks.

Copy k (k = 0..9) of every row has its year shifted by +k (the `year` column and the year
of `time_hour`), so every row stays distinct and the cleaned table holds ten times the
demo's flights. The file is a plain CSV made once from the demo's flights.csv.zip into a
cache folder outside the repository (ETL_BENCH_CACHE, else $XDG_CACHE_HOME or ~/.cache,
under dramatiq-etl-bench/): it is never shipped.

    python bench/tenx.py                      # make it (if missing) and print its path
    ETL_BENCH_TENX=/path/flights-10x.csv etl run -p bench.tenx:pipeline --shards 20

`pipeline()` is the demo pipeline (etl.demo.pipeline(): same stages, key, shards, batch
size and Parquet sink) reading the file named by ETL_BENCH_TENX (made in the default cache
folder when that is unset). Run it from the repository root, or with PYTHONPATH set to it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import zipfile
from pathlib import Path

COPIES = 10
VERSION = "v1"  # bump when the file's content changes: a new name, made again


def cache_dir() -> Path:
    """Where the bench keeps files it makes once."""
    configured = os.environ.get("ETL_BENCH_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dramatiq-etl-bench"


def demo_csv_text() -> str:
    """The demo's flights.csv, unzipped."""
    from etl.demo import flights_csv

    with zipfile.ZipFile(flights_csv()) as archive:
        (member,) = [m for m in archive.namelist() if not m.endswith("/")]
        return archive.read(member).decode("utf-8")


def plain_demo_csv(folder: Path | None = None) -> Path:
    """The demo's flights.csv unzipped into the cache (for tools that cannot read .zip)."""
    target = (folder or cache_dir()) / f"flights-1x-{VERSION}.csv"
    if not target.exists():
        _write_atomically(target, demo_csv_text())
    return target


def tenx_csv(folder: Path | None = None, copies: int = COPIES) -> Path:
    """The 10x CSV in the cache, made if missing."""
    target = (folder or cache_dir()) / f"flights-{copies}x-{VERSION}.csv"
    if target.exists():
        return target
    header, *lines = demo_csv_text().splitlines()
    columns = header.split(",")
    if columns[0] != "year" or columns[-1] != "time_hour":
        raise SystemExit(f"unexpected flights.csv header: {header}")
    heads, bodies, hours = [], [], []
    for line in lines:
        year, rest = line.split(",", 1)
        body, hour = rest.rsplit(",", 1)
        heads.append(int(year))
        bodies.append(body)
        hours.append(hour)
    out = io.StringIO()
    out.write(header + "\n")
    for k in range(copies):
        for year, body, hour in zip(heads, bodies, hours):
            shifted = f"{int(hour[:4]) + k}{hour[4:]}" if hour[:4].isdigit() else hour
            out.write(f"{year + k},{body},{shifted}\n")
    _write_atomically(target, out.getvalue())
    return target


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, target)


def pipeline():  # type: ignore[no-untyped-def]
    """The demo pipeline over the 10x CSV (ETL_BENCH_TENX)."""
    from etl import demo
    from etl.sources.files import FileSource

    path = os.environ.get("ETL_BENCH_TENX") or str(tenx_csv())
    return dataclasses.replace(demo.pipeline(), name="flights_tenx", source=FileSource(path))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(tenx_csv())
