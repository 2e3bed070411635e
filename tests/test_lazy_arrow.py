"""A pipeline is defined, and a distributed run sent, without importing numpy or pyarrow
(etl.core.lazy.LazyModule): the sender of a distributed run parses nothing, and the two
cost it ~0.2 s, an eighth of the demo's run on two workers from `etl run --wait` to its
end. The process that parses imports them on first use.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv

from etl.sources.lines import DEFAULT_NULL_VALUES
from tests.test_lazy_pandas import _fresh


def test_a_pipeline_and_the_senders_modules_load_without_numpy_or_pyarrow(tmp_path: Path) -> None:
    # Given a fresh interpreter
    # When it builds the demo pipeline (file source, hash shards, stages, Parquet sink) and
    # imports what sends and follows a distributed run
    result = _fresh("""
        import sys
        import etl.demo
        pipeline = etl.demo.pipeline().with_shards(20)
        import cli.run, etl.runner, etl.runtime.actors, etl.runtime.planning, etl.runtime.runs
        import etl.runtime.distributed, etl.drift, etl.sources.windows
        print(sorted(m for m in ("numpy", "pyarrow", "pandas") if m in sys.modules))
    """, cwd=tmp_path)
    # Then none of numpy, pyarrow and pandas is imported
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_parse_imports_what_it_needs_on_first_use(tmp_path: Path) -> None:
    # Given a CSV file and a fresh interpreter
    (tmp_path / "orders.csv").write_text("order_id,sku\n1,a\n2,NA\n")
    # When a file source reads it
    result = _fresh("""
        from etl.sources.files import FileSource
        table = FileSource("orders.csv").table()
        print(table.num_rows, table.column("sku").null_count)
    """, cwd=tmp_path)
    # Then the lazily imported pyarrow parsed it, its null markers included
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "1"]


def test_the_csv_null_markers_written_out_are_pyarrows_own() -> None:
    # Given the null markers etl.sources.lines writes out (so defining a source imports no
    # pyarrow), When compared with pyarrow's defaults, Then they are the same
    assert DEFAULT_NULL_VALUES == tuple(pacsv.ConvertOptions().null_values)
