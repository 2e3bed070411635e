"""File sources: formats, unparseable lines, shard batches following a cursor."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from etl.core.errors import SourceError
from etl.sources.base import SOURCE_ERROR_COLUMN
from etl.sources.files import FileSource
from shards import HashShards, RangeShards


def _frame(n: int = 1000) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "v": [f"x{i}" for i in range(n)]})


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.jsonl", "t.parquet"])
def test_formats_read_every_row(tmp_path: Path, name: str) -> None:
    # Given the same table written in several formats
    frame = _frame()
    path = tmp_path / name
    if name.startswith("t.csv"):
        data = frame.to_csv(index=False).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    # When read
    read = FileSource(str(path)).frame()
    # Then every row and column is there
    assert len(read) == len(frame)
    assert sorted(read["id"].tolist()) == list(range(len(frame)))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found: .*nope.csv"):
        FileSource(str(tmp_path / "nope.csv")).frame()


def test_unparseable_csv_lines_become_error_rows(tmp_path: Path) -> None:
    # Given a CSV with one line holding too many fields
    path = tmp_path / "bad.csv"
    path.write_text("id,v\n1,a\n2,b,EXTRA\n3,c\n")
    # When read
    frame = FileSource(str(path)).frame()
    # Then no line is lost: the broken one is a row carrying the reason and its text
    assert len(frame) == 3
    errors = frame[SOURCE_ERROR_COLUMN].dropna().tolist()
    assert len(errors) == 1 and "expected 2 fields, got 3" in errors[0] and "EXTRA" in errors[0]


def test_broken_json_lines_become_error_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": 1}) + "\n{not json\n" + json.dumps({"id": 2}) + "\n[1]\n")
    frame = FileSource(str(path)).frame()
    assert len(frame) == 4
    reasons = frame[SOURCE_ERROR_COLUMN].dropna().tolist()
    assert any("invalid JSON" in r for r in reasons)
    assert any("expected a JSON object" in r for r in reasons)


def test_a_json_field_of_another_kind_than_in_other_lines_quarantines_only_its_line(
        tmp_path: Path) -> None:
    # Given an API feed where "items" is a list in most lines but a string in line 3, and
    # "tags" holds lists of mixed items
    lines = [{"id": 1, "items": ["a"], "tags": [1, "x"]}, {"id": 2, "items": ["b", "c"]},
             {"id": 3, "items": "oops"}, {"id": 4, "items": None, "tags": ["y"]}]
    path = tmp_path / "feed.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    # When it is read with mixed_types="quarantine" (the default keeps such fields as text)
    frame = FileSource(str(path), mixed_types="quarantine").frame()
    # Then the source is read: line 3 is an error row naming the field and both kinds
    assert len(frame) == 4
    good = frame[frame[SOURCE_ERROR_COLUMN].isna()]
    assert sorted(good["id"].astype(int)) == [1, 2, 4]
    assert frame[SOURCE_ERROR_COLUMN].dropna().tolist() == [
        "line 3: field 'items' is a string where other lines have a list"]
    # And lists keep their items, while a column Arrow cannot type is kept as JSON text
    by_id = good.set_index(good["id"].astype(int))
    assert list(by_id.loc[2, "items"]) == ["b", "c"]
    assert by_id.loc[1, "tags"] == '[1, "x"]' and by_id.loc[4, "tags"] == '["y"]'


@pytest.mark.parametrize("plan", [HashShards(["id"], 7), RangeShards("id", 5)])
def test_batches_follow_the_cursor_and_cover_each_shard_once(tmp_path: Path, plan) -> None:  # type: ignore[no-untyped-def]
    # Given a source and a fitted plan
    path = tmp_path / "t.parquet"
    _frame(2345).to_parquet(path, index=False)
    source = FileSource(str(path))
    fitted = plan.fit(source.sample(["id"]))
    seen: list[int] = []
    for shard in range(fitted.shards):
        # When each shard is read batch by batch, following the cursor
        cursor, exhausted, batches = None, False, 0
        while not exhausted:
            batch = source.read_batch(fitted, shard, after=cursor, limit=100)
            assert batch.cursor_start == cursor
            seen.extend(batch.frame["id"].tolist())
            cursor, exhausted = batch.cursor_end, batch.exhausted
            batches += 1
            assert batches < 100
    # Then every row was read exactly once
    assert sorted(seen) == list(range(2345))


def test_reading_the_same_batch_twice_gives_the_same_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _frame(500).to_parquet(path, index=False)
    source = FileSource(str(path))
    plan = HashShards(["id"], 3).fit(source.sample(["id"]))
    first = source.read_batch(plan, 1, after=None, limit=50)
    again = FileSource(str(path)).read_batch(plan, 1, after=None, limit=50)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    assert first.cursor_end == again.cursor_end


def test_unknown_shard_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _frame(10).to_parquet(path, index=False)
    with pytest.raises(SourceError, match="nope.*columns are: id, v"):
        FileSource(str(path)).sample(["nope"])


def test_a_file_is_parsed_once_per_process_whatever_reads_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from etl.sources import files as sources

    # Given a fresh parse cache, and a file read by two sources (two runs, or a preload)
    monkeypatch.setattr(sources, "_parsed", sources.ParsedCache(size=2))
    path = tmp_path / "rows.csv"
    path.write_text("id,v\n1,a\n2,b\n")
    calls = []
    original = sources.FileSource._parse
    monkeypatch.setattr(sources.FileSource, "_parse",
                        lambda self, data: calls.append(1) or original(self, data))
    first, second = sources.FileSource(str(path)), sources.FileSource(str(path))
    # When both read it, Then it is parsed once and both get the same rows
    assert first.table().equals(second.table()) and len(calls) == 1
    # When the file changes, Then it is parsed again (the cache is keyed by content)
    path.write_text("id,v\n1,a\n2,b\n3,c\n")
    assert sources.FileSource(str(path)).table().num_rows == 3 and len(calls) == 2
    # And a window still applies to the shared parse
    from etl.sources.windows import Window

    windowed = sources.FileSource(str(path), window=Window("id", "2", "4"))
    assert windowed.table().column("id").to_pylist() == [2, 3] and len(calls) == 2
    # And the cache keeps only the newest `size` files
    for n in range(3):
        other = tmp_path / f"o{n}.csv"
        other.write_text(f"id\n{n}\n")
        sources.FileSource(str(other)).table()
    assert len(sources._parsed._tables) == 2
