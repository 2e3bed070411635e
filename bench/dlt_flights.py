"""dlt doing the demo's cleaning, to Parquet files on the local file system.

The same cleaning as the hand-written script (bench/pandas_baseline.clean_flights, plain
pandas) hands one cleaned DataFrame to a dlt pipeline whose destination is `filesystem`
(a local folder) with the parquet loader file format: dlt extracts it (Arrow), normalizes,
and loads the Parquet file(s) into OUTPUT_DIR/<dataset>/flights/, keeping its pipeline
state under OUTPUT_DIR/.dlt. dlt's own cleaning (add_map, column hints) would run the same
pandas code per item, so the cleaning is shared and the difference is dlt's loading.

    python bench/dlt_flights.py OUTPUT_DIR [--input FLIGHTS.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # no network here, and none wanted

import dlt  # noqa: E402
import pandas as pd  # noqa: E402
from dlt.destinations import filesystem  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.pandas_baseline import clean_flights, flights_csv  # noqa: E402


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--input", default=None, help="flights CSV (default: the demo's)")
    args = parser.parse_args(argv[1:])
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cleaned = clean_flights(pd.read_csv(args.input or flights_csv()))
    pipeline = dlt.pipeline(pipeline_name="flights_bench", pipelines_dir=str(output / ".dlt"),
                            destination=filesystem(bucket_url=output.as_uri()),
                            dataset_name="flights_bench")
    info = pipeline.run(cleaned, table_name="flights", loader_file_format="parquet",
                        write_disposition="replace")
    info.raise_on_failed_jobs()
    elapsed = time.perf_counter() - started
    rows = len(cleaned)
    print(f"{rows} rows in {elapsed:.3f} s ({rows / elapsed:,.0f} rows/s) -> {output}")


if __name__ == "__main__":
    main(sys.argv)
