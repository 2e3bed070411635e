"""A file source parsed ahead: its fingerprint's hash overlaps its parse, nothing else changes.

`etl run` asks a file source to begin parsing before it reads the fingerprint that says
whether the run is new. The rows, the fingerprint and the errors must be those of a source
parsed when asked; a process that never asks for the rows (a run found complete) must still
end cleanly.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest

from etl.core.errors import SourceError
from etl.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: int) -> None:
    """A table of its own content (the parsed-file cache is keyed by content)."""
    tag = uuid.uuid4().hex
    frame = pd.DataFrame({"id": range(rows), "v": [f"{tag}-{i}" for i in range(rows)]})
    if path.name.endswith(".csv.gz"):
        path.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    elif path.name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif path.name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl", "t.parquet"])
def test_a_source_parsed_ahead_gives_the_rows_and_fingerprint_of_one_parsed_when_asked(
        tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a file, and two sources over it: one told to parse ahead, one not
    path = tmp_path / name
    _write(path, 5_000)
    parses: list[str] = []
    parse = FileSource._parse

    def counted(self: FileSource, data: bytes):  # type: ignore[no-untyped-def]
        parses.append(self.path)
        return parse(self, data)

    monkeypatch.setattr(FileSource, "_parse", counted)
    ahead = FileSource(str(path))
    # When the first parses ahead, then is asked for its fingerprint and rows in the order
    # a run opens (fingerprint, sample, row count, table)
    ahead.parse_ahead()
    ahead.parse_ahead()  # a second call begins nothing more
    fingerprint = ahead.fingerprint()
    sample = ahead.sample(["id"])
    rows = ahead.row_count()
    table = ahead.table()
    # Then it was parsed once, and gives what the source parsed when asked gives
    assert len(parses) == 1
    plain = FileSource(str(path))
    assert fingerprint == plain.fingerprint()
    assert rows == 5_000 and len(sample) == 5_000
    assert table.equals(plain.table())


def test_a_file_that_cannot_be_parsed_fails_where_its_rows_are_asked_for(tmp_path: Path) -> None:
    # Given a .gz file that is not gzip
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(b"id,v\n1,a\n" * 100)
    source = FileSource(str(path))
    # When it is parsed ahead and its fingerprint read (a hash of its bytes)
    source.parse_ahead()
    assert len(source.fingerprint()) == 64
    # Then asking for its rows raises the parse's own error, naming the file
    with pytest.raises(SourceError, match="broken.csv.gz.*not a gzip file"):
        source.table()


def test_a_process_that_never_asks_for_the_rows_ends_cleanly(tmp_path: Path) -> None:
    # Given a CSV large enough that its parse outlives a fingerprint read
    path = tmp_path / "big.csv"
    _write(path, 1_500_000)
    # When a process parses it ahead, reads only its fingerprint and ends (a complete run)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from etl.sources.files import FileSource
        source = FileSource({str(path)!r})
        source.parse_ahead()
        print(source.fingerprint())
    """)], env=env, text=True, capture_output=True, timeout=120)
    # Then it ends with status 0 and nothing on stderr (no thread cut off inside pyarrow)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(done.stdout.strip()) == 64


def test_a_run_parses_ahead_only_when_it_will_parse(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a CSV pipeline on its own stores, and a record of the sources told to parse ahead
    import etl
    from etl.pipeline import Pipeline
    from etl.sinks.parquet import ParquetSink
    from etl.stores import Stores
    from etl.stores.objects import open_objects
    from etl.stores.state import open_state
    from shards import HashShards

    path = tmp_path / "orders.csv"
    _write(path, 2_000)
    told: list[str] = []
    parse_ahead = FileSource.parse_ahead

    def recorded(self: FileSource) -> None:
        told.append(self.path)
        parse_ahead(self)

    monkeypatch.setattr(FileSource, "parse_ahead", recorded)
    stores = Stores(open_state(f"sqlite:///{tmp_path}/state.db"),
                    open_objects(f"file://{tmp_path}/objects"))
    pipeline = Pipeline(name="orders", source=FileSource(str(path)),
                        sink=ParquetSink(str(tmp_path / "sink")), key=["id"],
                        shards=HashShards(["id"], 3))

    def run(**options: object) -> "etl.RunOutcome":
        return etl.run(pipeline, spec="tests:unused", stores=stores, processes=1, **options)

    # When it runs for the first time (no run yet: a new run parses)
    first = run()
    # Then its source was parsed ahead, and the run loaded every row
    assert first.completed and first.rows_loaded == 2_000
    assert told == [str(path)]
    # When it runs again over the same file (complete: only the fingerprint is read)
    again = run()
    # Then nothing was parsed ahead, and nothing loaded
    assert again.completed and again.loaded_now == 0
    assert told == [str(path)]
    # When a fresh run is asked for
    fresh = run(fresh=True)
    # Then the parse is begun ahead again
    assert fresh.completed and fresh.rows_loaded == 2_000
    assert told == [str(path)] * 2
