"""Pipelines are built without importing pandas, so that `etl run` begins parsing its
source first and imports pandas while the parse runs (etl.core.lazy.LazyModule).

pandas takes ~0.25 s to import; the demo's source parses in ~0.15 s. Done one after the
other they were ~0.1 s of the demo's ~1.1 s `etl run`, on its serial path before the
workers fork.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from etl.core.lazy import LazyModule
from stages import Cast, DeriveTimestamp
from stages.errors import StageError
from stages.types import KNOWN_DTYPES

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str, *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          env={**base, **(env or {})}, text=True, capture_output=True, timeout=300)


def test_the_demo_pipeline_is_built_without_importing_pandas(tmp_path: Path) -> None:
    # Given a fresh interpreter, When it builds the demo pipeline and imports `etl run`
    result = _fresh("""
        import sys
        import etl.demo, cli.run
        pipeline = etl.demo.pipeline().with_shards(20)
        print("pandas" in sys.modules, len(pipeline.stages))
    """, cwd=tmp_path)
    # Then pandas is not imported yet (its stages, shard plan, source and sink all wait)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "7"]


def test_etl_run_begins_the_parse_before_pandas_is_imported(tmp_path: Path) -> None:
    # Given `etl run` of the demo in a fresh interpreter, with the parse's start recorded
    result = _fresh("""
        import json, sys
        import etl.sources.files as files
        seen = []
        begin = files.FileSource.parse_ahead

        def recorded(self):
            seen.append("pandas" in sys.modules)
            begin(self)

        files.FileSource.parse_ahead = recorded
        sys.argv = ["etl", "run", "--shards", "4", "--fresh", "--no-progress"]
        from cli.main import main
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(json.dumps(seen), file=sys.stderr)
    """, cwd=tmp_path, env={"ETL_DEMO_OUTPUT": str(tmp_path / "out")})
    # When it ends, Then the run completed, and its source began parsing before pandas came
    assert "completed" in result.stdout, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == [False]
    assert len(pd.read_parquet(tmp_path / "out")) == 328_521


def test_a_lazy_module_reads_the_real_modules_names() -> None:
    # Given a lazy pandas, When names are read through it
    lazy = LazyModule("pandas")
    # Then they are pandas' own objects, kept after the first read, and the module says so
    assert lazy.DataFrame is pd.DataFrame and lazy.NA is pd.NA
    assert "DataFrame" in vars(lazy)
    assert "pandas" in repr(lazy)
    with pytest.raises(AttributeError):
        lazy.no_such_name
    with pytest.raises(AttributeError):  # dunder probes (copy, pickle) are not forwarded
        lazy.__wrapped__


def test_every_dtype_a_cast_accepts_without_pandas_is_one_pandas_accepts() -> None:
    # Given the names a Cast takes without asking pandas, Then pandas takes each of them
    for name in KNOWN_DTYPES:
        pd.api.types.pandas_dtype(name)
    # And a Cast of known names converts as pandas' dtypes do, built before its first batch
    cast = Cast({"a": "Int64", "b": "string"})
    out = cast.apply(pd.DataFrame({"a": ["1", None], "b": [1, 2]})).kept
    assert str(out["a"].dtype) == "Int64" and out["a"].tolist()[0] == 1
    assert isinstance(out["b"].dtype, pd.StringDtype)
    # And a name pandas does not know is still refused when the stage is built
    with pytest.raises(StageError, match="Int65"):
        Cast({"a": "Int65"})


def test_a_zone_that_is_no_iana_name_is_still_judged_by_pandas() -> None:
    # Given zones by IANA name, by fixed offset and a wrong one, When stages are built
    DeriveTimestamp(target="t", year="y", month="m", day="d", hhmm="h", tz="America/New_York")
    DeriveTimestamp(target="t", year="y", month="m", day="d", hhmm="h", tz="UTC")
    # Then a spelling only pandas knows is judged by pandas, and a wrong one is refused
    try:
        pd.Timestamp("2000-01-01").tz_localize("+05:00")
    except Exception:  # noqa: BLE001 - this pandas refuses it: so must the stage
        with pytest.raises(StageError, match="unknown time zone"):
            DeriveTimestamp(target="t", year="y", month="m", day="d", hhmm="h", tz="+05:00")
    else:
        DeriveTimestamp(target="t", year="y", month="m", day="d", hhmm="h", tz="+05:00")
    with pytest.raises(StageError, match="unknown time zone 'Mars/Olympus'"):
        DeriveTimestamp(target="t", year="y", month="m", day="d", hhmm="h", tz="Mars/Olympus")


def test_the_distributed_sender_imports_no_pandas(tmp_path: Path) -> None:
    # Given a fresh interpreter, When it imports what `etl run` on a broker sends with
    result = _fresh("""
        import sys
        import cli.run, etl.runtime.distributed, etl.runtime.planning, etl.demo
        etl.demo.pipeline()
        print("pandas" in sys.modules)
    """, cwd=tmp_path)
    # Then pandas is not among them: the sender only sends messages and reads the state
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
