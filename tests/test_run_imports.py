"""What `etl run` of an embedded pipeline imports: only what the run uses.

The parent process of an embedded run imports everything before it parses the source and
forks its workers, so an import the run does not use is paid in the serial part of every
`etl run`. A pipeline of a CSV file into a Parquet dataset needs no database, broker, object
store or metrics client, and `--no-progress` needs no progress bar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: Modules an embedded CSV-to-Parquet run with --no-progress has no use for.
UNUSED = ("pymongo", "redis", "pika", "boto3", "botocore", "sqlalchemy", "psycopg", "pymysql",
          "deltalake", "prometheus_client", "mongomock", "rich.progress")


def _rows_project(folder: Path) -> None:
    """A CSV-to-Parquet project in `folder`: `pipes:rows`, 50 rows, 2 hash shards."""
    (folder / "rows.csv").write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(50)))
    (folder / "pipes.py").write_text(textwrap.dedent("""
        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards

        rows = Pipeline(name="rows", source=FileSource("rows.csv"), sink=ParquetSink("out"),
                        key=["id"], shards=HashShards(["id"], 2), batch_size=20)
    """))


def _env(folder: Path) -> dict[str, str]:
    """This environment without ETL_ settings, importing from `folder` and the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(Path(__file__).resolve().parents[1])])
    return env


def test_an_embedded_run_without_progress_imports_no_unused_client(tmp_path: Path) -> None:
    # Given a project with a CSV-to-Parquet pipeline
    _rows_project(tmp_path)
    probe = textwrap.dedent("""
        import json, sys
        sys.argv = ["etl", "run", "-p", "pipes:rows", "--no-progress"]
        from cli.main import main
        try:
            main()
        finally:
            print(json.dumps(sorted(sys.modules)), file=sys.stderr)
    """)
    env = _env(tmp_path)
    # When `etl run --no-progress` runs it in a fresh interpreter
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=300)
    # Then the run completes, and none of the unused modules was imported
    assert "completed" in result.stdout, result.stderr
    loaded = set(json.loads(result.stderr.strip().splitlines()[-1]))
    assert {name for name in loaded
            if any(name == unused or name.startswith(unused + ".") for unused in UNUSED)} == set()


def test_an_embedded_run_begins_its_parse_before_dramatiq_and_rich_tables_load(
        tmp_path: Path) -> None:
    # Given the same kind of project, and a probe noting which of Dramatiq and rich's table
    # are loaded when the source's parse begins
    _rows_project(tmp_path)
    probe = textwrap.dedent("""
        import json, sys
        from etl.sources.files import FileSource
        seen = []
        begin = FileSource.parse_ahead
        def noting(self):
            seen.append(sorted(m for m in ("dramatiq", "rich.table") if m in sys.modules))
            return begin(self)
        FileSource.parse_ahead = noting
        sys.argv = ["etl", "run", "-p", "pipes:rows", "--no-progress", "--fresh"]
        from cli.main import main
        try:
            main()
        finally:
            print(json.dumps(seen), file=sys.stderr)
    """)
    env = _env(tmp_path)
    # When `etl run` runs it (embedded) in a fresh interpreter
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=300)
    # Then the parse began (once, ahead) before either was imported: their imports (~35 ms)
    # overlap the parse instead of delaying it, and the run still completes
    assert "completed" in result.stdout, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == [[]]
