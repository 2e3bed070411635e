"""The pipeline's key in the destination, as a user meets it through `etl`: a merge sink
holds one row per key across batches, runs, backfills and replays; a sink that cannot
enforce the key says so and counts what it holds twice; a key the stages renamed away is
one line naming the stage. Real subprocesses, real files, real databases."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_cli import etl

ROWS, IDS = 12_000, 9_000


def _feed(workdir: Path, *, bad_rows: tuple[int, ...] = ()) -> pd.DataFrame:
    """A feed with repeated ids (later lines are newer versions), a day column to window
    on, and an amount that does not parse on the lines `bad_rows`."""
    rng = np.random.default_rng(7)
    feed = pd.DataFrame({"id": rng.integers(0, IDS, ROWS), "version": np.arange(ROWS),
                         "day": rng.integers(1, 29, ROWS)})
    feed["amount"] = (feed["version"] * 0.5).astype(str)
    feed.loc[list(bad_rows), "amount"] = "n/a"
    feed.to_csv(workdir / "feed.csv", index=False)
    return feed


def _pipeline(workdir: Path, sink: str, *, stages: str | None = None,
              key: str = '["id"]') -> None:
    stages = stages or '[Dedupe(key=["id"], keep="last"), Cast({"amount": "float64"})]'
    (workdir / "feedpipes.py").write_text(textwrap.dedent(f"""
        from etl import FileSource, Pipeline, {sink.partition("(")[0]}
        from shards import HashShards
        from stages import *

        feed = Pipeline(
            name="feed",
            source=FileSource("feed.csv"),
            stages={stages},
            sink={sink},
            key={key},
            shards=HashShards(["id"], 8),
            batch_size=1_000,
            window_column="day",
        )
    """))


def _merge_sink(kind: str, workdir: Path, request: pytest.FixtureRequest) -> tuple[str, callable]:  # type: ignore[valid-type]
    """The sink's constructor text for the pipeline module and a reader of what it holds."""
    if kind == "delta":
        pytest.importorskip("deltalake")

        def read() -> pd.DataFrame:
            from deltalake import DeltaTable

            return DeltaTable(str(workdir / "out" / "feed")).to_pandas()

        return 'DeltaSink("out/feed")', read
    url = request.getfixturevalue("postgres_url")
    table = request.getfixturevalue("postgres_table")

    def read_sql() -> pd.DataFrame:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            return pd.read_sql_table(table, engine)
        finally:
            engine.dispose()

    return f'SqlSink({url!r}, table={table!r})', read_sql


@pytest.mark.parametrize("kind", ["delta", "postgresql"])
def test_a_feed_with_repeated_ids_holds_one_row_per_id_in_a_merge_sink(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    # Given a feed whose ids repeat across batches and shards' batches (12,000 rows, ~6,600 ids)
    feed = _feed(tmp_path)
    sink, read = _merge_sink(kind, tmp_path, request)
    _pipeline(tmp_path, sink)
    # When it runs on 8 hash shards of 1,000-row batches in 2 processes
    result = etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress", "--processes", "2")
    assert result.returncode == 0, result.stderr
    # Then the destination holds each id once, the last version of it in the feed
    held = read()
    assert held["id"].is_unique
    want = feed.drop_duplicates("id", keep="last").set_index("id")["version"].sort_index()
    assert held.set_index("id")["version"].sort_index().astype("int64").equals(want.astype("int64"))
    # And the run said nothing about an unenforced key
    assert "not enforced" not in result.stderr
    # When a backfill loads a window of days again (newer versions: the same rows)
    backfill = etl(tmp_path, "backfill", "-p", "feedpipes:feed", "--start", "1", "--end", "15",
                   "--no-progress", "--processes", "2")
    assert backfill.returncode == 0, backfill.stderr
    # Then still one row per id, the same rows
    again = read()
    assert again["id"].is_unique and len(again) == len(want)


def test_run_backfill_and_replay_into_a_merge_sink_leave_one_row_per_key(tmp_path: Path) -> None:
    pytest.importorskip("deltalake")
    # Given a feed where three lines have an amount that does not parse (an old version of
    # its id, or the newest)
    feed = _feed(tmp_path, bad_rows=(5, 500, ROWS - 3))
    stages = '[Cast({"amount": "float64"})]'
    _pipeline(tmp_path, 'DeltaSink("out/feed")', stages=stages)
    # When it runs (those rows are quarantined), a backfill reloads days 1-28, and the
    # quarantine is replayed with a fixed pipeline that reads "n/a" as a null amount
    assert etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress").returncode == 0
    backfill = etl(tmp_path, "backfill", "-p", "feedpipes:feed", "--start", "1", "--end", "29",
                   "--no-progress")
    assert backfill.returncode == 0, backfill.stderr
    (tmp_path / "fixed.py").write_text((tmp_path / "feedpipes.py").read_text().replace(
        stages, '[MapValues("amount", {"n/a": None}), Cast({"amount": "float64"})]'))
    run_id = _first_run(tmp_path)
    replayed = etl(tmp_path, "quarantine", "replay", run_id, "-p", "fixed:feed")
    assert replayed.returncode == 0, replayed.stderr
    # Then the table holds one row per id, its newest version: a replayed old version did
    # not overwrite a newer one, a replayed newest version is there
    from deltalake import DeltaTable

    held = DeltaTable(str(tmp_path / "out" / "feed")).to_pandas()
    assert held["id"].is_unique
    want = feed.drop_duplicates("id", keep="last").set_index("id")["version"].sort_index()
    assert held.set_index("id")["version"].sort_index().astype("int64").equals(want.astype("int64"))


def _first_run(workdir: Path) -> str:
    """The id of the first run the working directory's state store holds."""
    import sqlite3

    with sqlite3.connect(workdir / ".etl" / "state.db") as conn:
        return conn.execute("SELECT run_id FROM EtlRun ORDER BY created_at LIMIT 1").fetchone()[0]


def test_a_parquet_dataset_says_it_does_not_enforce_the_key_and_counts_repeats(
        tmp_path: Path) -> None:
    # Given the same feed into a Parquet dataset, deduplicated per batch only
    feed = _feed(tmp_path)
    _pipeline(tmp_path, 'ParquetSink("out/feed")')
    # When described and run
    described = etl(tmp_path, "describe", "-p", "feedpipes:feed")
    result = etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress")
    # Then both say in one line that the key is not enforced
    assert "not enforced" in described.stdout
    assert result.returncode == 0, result.stderr
    assert sum("not enforced" in line for line in result.stderr.splitlines()) == 1
    # And the summary counts the ids held in more than one batch: exactly those the files hold
    files = list((tmp_path / "out" / "feed").glob("*.parquet"))
    held = pd.concat(pd.read_parquet(f, columns=["id"]).drop_duplicates().assign(f=i)
                     for i, f in enumerate(files))
    repeated = int((held.groupby("id").size() > 1).sum())
    assert repeated > 0 and feed["id"].nunique() < len(held)
    line = next(x for x in result.stdout.splitlines() if "keys in more than one batch" in x)
    assert f"{repeated:,}" in line


def test_a_key_the_stages_renamed_is_one_line_naming_the_stage(tmp_path: Path) -> None:
    # Given a pipeline keyed on "Record ID", a column its first stage renames to record_id
    (tmp_path / "feed.csv").write_text("Record ID,amount\n1,2.5\n2,3.5\n")
    _pipeline(tmp_path, 'ParquetSink("out/feed")', key='["Record ID"]',
              stages='[SnakeCaseColumns(), Cast({"amount": "float64"})]')
    (tmp_path / "feedpipes.py").write_text((tmp_path / "feedpipes.py").read_text()
                                          .replace('HashShards(["id"], 8)', 'HashShards(["Record ID"], 2)'))
    # When checked, Then one line names the column and the stage, exit 2
    checked = etl(tmp_path, "describe", "--check", "-p", "feedpipes:feed")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "'Record ID'" in checked.stderr and "stage 1 SnakeCaseColumns()" in checked.stderr
    assert "Traceback" not in checked.stderr
    # When run, Then it fails (exit 1) with the same cause, nothing loaded
    result = etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress")
    assert result.returncode == 1
    assert "stage 1 SnakeCaseColumns() renamed or dropped it" in result.stderr
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_a_parquet_sink_on_s3_is_refused_in_one_line(tmp_path: Path) -> None:
    # Given a ParquetSink pointed at s3:// (it writes local folders only)
    _feed(tmp_path)
    _pipeline(tmp_path, 'ParquetSink("s3://bucket/out/x")')
    # When described or run, Then one line says so and names the sink that can, exit 2
    for args in (["describe"], ["run", "--no-progress"]):
        result = etl(tmp_path, *args, "-p", "feedpipes:feed")
        assert result.returncode == 2, result.stderr
        assert "ParquetSink writes a local folder, not s3://" in result.stderr
        assert "DeltaSink" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s3:").exists()


def test_a_completed_run_whose_stages_changed_is_run_again(tmp_path: Path) -> None:
    # Given a completed run
    _feed(tmp_path)
    _pipeline(tmp_path, 'ParquetSink("out/feed")')
    assert etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress").returncode == 0
    same = etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress")
    assert "already complete" in same.stderr
    # When a stage is added to the pipeline and it runs again
    text = (tmp_path / "feedpipes.py").read_text()
    (tmp_path / "feedpipes.py").write_text(text.replace('keep="last"), ', 'keep="last"), '
                                                        'DropRows("day > 20", reason="late"), '))
    result = etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress")
    # Then it says what changed and loads a new run with the edited stages
    assert result.returncode == 0, result.stderr
    assert "stages changed since run" in result.stderr and "new run" in result.stderr
    loaded = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out" / "feed").glob("*.parquet"))
    assert loaded["day"].max() <= 20


@pytest.mark.parametrize("processes", [1, 2])
def test_the_repeats_counted_as_batches_load_are_those_the_files_hold(
        tmp_path: Path, processes: int) -> None:
    # Given the feed into a Parquet dataset in batches of 1,000 rows: 8 shards of
    # several batches each, ids repeated across the batches of a shard
    _feed(tmp_path)
    _pipeline(tmp_path, 'ParquetSink("out/feed")')
    # When run in one process, or in two forked ones
    result = etl(tmp_path, "-vv", "run", "-p", "feedpipes:feed", "--no-progress",
                 "--processes", str(processes))
    assert result.returncode == 0, result.stderr
    # Then the audit reads no file: every shard was counted by the process that loaded it
    assert "8 shard(s) counted as their batches loaded, 0 file(s) read" in result.stderr
    # And the count is the one the files give
    files = sorted((tmp_path / "out" / "feed").glob("*.parquet"))
    assert len(files) > 8
    held = pd.concat(pd.read_parquet(f, columns=["id"]).drop_duplicates().assign(f=i)
                     for i, f in enumerate(files))
    repeated = int((held.groupby("id").size() > 1).sum())
    line = next(x for x in result.stdout.splitlines() if "keys in more than one batch" in x)
    assert repeated > 0 and f"{repeated:,}" in line


def test_after_a_sigkill_the_resumed_run_counts_the_shards_it_cannot_vouch_for_from_the_files(
        tmp_path: Path) -> None:
    # Given the feed into a Parquet dataset, and a first run SIGKILLed right after the
    # fifth batch it loads was written, before that load was counted
    _feed(tmp_path)
    _pipeline(tmp_path, 'ParquetSink("out/feed")')
    killed = etl(tmp_path, "run", "-p", "feedpipes:feed", "--no-progress", "--processes", "1",
                 env={"ETL_CRASH_AT": "load.after_sink:5"})
    assert killed.returncode == -9, killed.stderr
    # When the run is resumed
    result = etl(tmp_path, "-vv", "run", "-p", "feedpipes:feed", "--no-progress",
                 "--processes", "1")
    assert result.returncode == 0, result.stderr
    # Then the audit read the files of the shards loaded partly before the kill, and counted
    # the others as they loaded
    line = next(x for x in result.stderr.splitlines() if "key audit" in x)
    counted, read = (int(n) for n in re.findall(r"(\d+) (?:shard|file)\(s\)", line))
    assert counted >= 1 and read >= 2, line
    # And the summary's count is exactly the one the files give
    files = sorted((tmp_path / "out" / "feed").glob("*.parquet"))
    held = pd.concat(pd.read_parquet(f, columns=["id"]).drop_duplicates().assign(f=i)
                     for i, f in enumerate(files))
    repeated = int((held.groupby("id").size() > 1).sum())
    summary = next(x for x in result.stdout.splitlines() if "keys in more than one batch" in x)
    assert repeated > 0 and f"{repeated:,}" in summary
