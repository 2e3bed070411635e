"""How a fetched batch lands: a pointer into a file source (nothing copied), or a copy in
the object store; and how the steps after it get the same rows back either way."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from etl.core.errors import BatchError, ConfigError
from etl.pipeline import Pipeline
from etl.runtime import batches
from etl.runtime.context import RunContext
from etl.runtime.framecache import frames
from etl.runtime.raw import is_pointer
from etl.runtime.runs import open_run
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from etl.stores.objects import open_objects
from etl.stores.state import open_state
from shards import HashShards
from stages import Upper


def _context(tmp_path: Path, **changes) -> RunContext:  # type: ignore[no-untyped-def]
    source = tmp_path / "items.csv"
    if not source.exists():
        source.write_text("id,code\n" + "".join(f"{i},c{i % 5}\n" for i in range(120)))
    pipeline = replace(Pipeline(name="items", source=FileSource(str(source)),
                                sink=ParquetSink(str(tmp_path / "out")), key=["id"],
                                shards=HashShards(["id"], 2), stages=[Upper(columns=["code"])],
                                batch_size=25), **changes)
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    run, _ = open_run(state, pipeline, spec="items", fresh=True)
    return RunContext.build(run, pipeline, state, open_objects(f"file://{tmp_path}/objects"))


def _raw_objects(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "objects").glob("runs/*/raw/**/*.parquet"))


def _forget_this_process() -> None:
    """What another process would see: no batch handed on in memory."""
    frames.clear()


def test_a_file_batch_lands_as_a_pointer_and_is_cut_again_elsewhere(tmp_path: Path) -> None:
    # Given a run over a CSV file (a source that gives the same rows again)
    ctx = _context(tmp_path)
    # When batch 0 of shard 1 is fetched
    outcome = batches.fetch(ctx, 1, 0)
    # Then nothing is copied: its payload points into the source by fingerprint
    payload = outcome.payload
    assert payload is not None and is_pointer(payload) and payload.bytes == 0
    assert payload.sha256 == "source:" + ctx.pipeline.source.fingerprint()
    assert _raw_objects(tmp_path) == []
    # And a clean in another process (nothing cached) cuts the same rows again
    fetched = ctx.pipeline.source.read_batch(ctx.plan, 1, after=None, limit=25).table.to_pandas()
    _forget_this_process()
    again = batches.read_frame(ctx, 1, 0, payload.key, sha256=payload.sha256, payload=payload)
    pd.testing.assert_frame_equal(again, fetched)
    assert batches.clean(ctx, 1, 0) == (25, 0)


def test_a_pointer_into_an_edited_file_is_a_batch_error_naming_the_way_out(tmp_path: Path) -> None:
    # Given a batch fetched as a pointer, then the file edited
    ctx = _context(tmp_path)
    payload = batches.fetch(ctx, 0, 0).payload
    assert payload is not None
    source = tmp_path / "items.csv"
    source.write_text(source.read_text().replace("c3", "c9"))
    _forget_this_process()
    changed = replace(ctx, pipeline=replace(ctx.pipeline, source=FileSource(str(source))))
    # When its rows are needed again
    with pytest.raises(BatchError) as raised:
        batches.read_frame(changed, 0, 0, payload.key, sha256=payload.sha256, payload=payload)
    # Then the error says the source changed and what to do
    assert "source changed" in str(raised.value) and "--fresh" in str(raised.value)


def test_raw_landing_copy_keeps_a_checked_copy(tmp_path: Path) -> None:
    # Given the same file with raw_landing="copy"
    ctx = _context(tmp_path, raw_landing="copy")
    # When a batch is fetched
    payload = batches.fetch(ctx, 0, 0).payload
    # Then it is a Parquet copy in the object store with its sha256
    assert payload is not None and not is_pointer(payload) and payload.bytes > 0
    assert len(_raw_objects(tmp_path)) == 1


def test_an_unknown_raw_landing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="raw_landing"):
        Pipeline(name="x", source=None, sink=None, key=["id"], shards=HashShards(["id"], 1),
                 raw_landing="pointer")
