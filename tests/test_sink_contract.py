"""One contract, every sink: ParquetSink and DeltaSink on a temporary directory, SqlSink on a
SQLite file, MongoSink on a mongomock:// URL. A new sink joins by adding a case to the `sink` fixture.

Idempotence is what makes a load exactly once: a batch written again after a crash between
the write and its ledger entry must be held once.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pytest

from etl.core.parquet import to_parquet_bytes
from etl.sinks.base import (BackfillAware, KeyAudit, ParquetWriter, Sequenced, SerialCommits, Sink,
                            make_seq)
from tests.contracts import assert_declares_exactly, sequenced

SINKS = ["parquet", "mongo", "delta", "sql"]


def _batch(start: int, n: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"id": list(range(start, start + n)),
                         "v": [f"v{i}" for i in range(start, start + n)]})


def _write(sink: Any, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
    """Write a batch as the runtime does: with row sequences for a key-honouring sink (the
    run's stamp from its name: r1 -> 1, b1 -> 2)."""
    if isinstance(sink, Sequenced):
        frame = sequenced(frame, stamp=_STAMPS[run_id], shard=shard, batch=batch)
    return sink.write_batch(frame, run_id=run_id, shard=shard, batch=batch)


def _finish(sink: Any, run_id: str) -> None:
    if isinstance(sink, Sequenced):
        sink.finish_run(run_id, first_seq=make_seq(_STAMPS[run_id], 0, 0, 0))
    else:
        sink.finish_run(run_id)


_STAMPS = {"r0": 0, "r1": 1, "b1": 2}


def _held(sink: Any) -> list[int]:
    frame = sink.read_all()
    return sorted(int(i) for i in frame["id"]) if len(frame) else []


@pytest.fixture(params=SINKS)
def make_sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens a sink of each implementation; every call opens the same destination."""
    if request.param == "parquet":
        from etl.sinks.parquet import ParquetSink

        yield lambda: ParquetSink(str(tmp_path / "dataset"))
        return
    if request.param == "delta":
        pytest.importorskip("deltalake")
        from etl.sinks.delta import DeltaSink

        yield lambda: DeltaSink(str(tmp_path / "table"), key=["id"])
        return
    if request.param == "sql":
        pytest.importorskip("sqlalchemy")
        from etl.sinks.sql import SqlSink

        yield lambda: SqlSink(f"sqlite:///{tmp_path / 'rows.db'}", table="rows", key=["id"])
        return
    pytest.importorskip("mongomock")
    from etl.sinks.mongo import MongoSink
    from tests.conftest import _mongomock_accepts_new_pymongo

    _mongomock_accepts_new_pymongo()
    url = f"mongomock://localhost/etl_contract_{uuid.uuid4().hex[:10]}"
    opened: list[Any] = []

    def make() -> Any:
        # one client for the destination, as a process holds one: sinks opened later share it
        client = opened[0]._coll().database.client if opened else None
        opened.append(MongoSink(url, collection="rows", key=["id"], client=client))
        return opened[-1]

    yield make
    if opened:
        opened[0]._coll().database.client.drop_database(opened[0].database)


def test_a_sink_describes_itself(make_sink: Callable[[], Any]) -> None:
    # Given a sink, When it is described, Then it says something, and it is a Sink
    sink = make_sink()
    assert isinstance(sink.describe(), str) and sink.describe().strip()
    assert isinstance(sink, Sink) and Sink in type(sink).__mro__
    # And it defines every method of the contract itself
    for method in ("describe", "write_batch", "finish_run", "read_all"):
        assert getattr(type(sink), method) is not getattr(Sink, method), method


def test_the_same_batch_written_twice_is_held_once(make_sink: Callable[[], Any]) -> None:
    # Given a sink, When batch 0 of shard 0 is written twice (a redelivery)
    sink = make_sink()
    written = [_write(sink, _batch(0), run_id="r1", shard=0, batch=0) for _ in range(2)]
    # Then each write reports the batch's rows, and every row is held once
    assert written == [5, 5]
    assert _held(sink) == list(range(5))


def test_different_batches_are_all_held(make_sink: Callable[[], Any]) -> None:
    # Given a sink, When batches of two shards are written, one of them twice
    sink = make_sink()
    _write(sink, _batch(0), run_id="r1", shard=0, batch=0)
    _write(sink, _batch(5), run_id="r1", shard=0, batch=1)
    _write(sink, _batch(10, 3), run_id="r1", shard=1, batch=0)
    _write(sink, _batch(5), run_id="r1", shard=0, batch=1)
    # Then every row of every batch is held, once, with its values
    assert _held(sink) == list(range(13))
    held = sink.read_all()
    assert sorted(held["v"]) == sorted(f"v{i}" for i in range(13))


def test_finishing_a_run_keeps_its_rows(make_sink: Callable[[], Any]) -> None:
    # Given a sink holding the batches of a run
    sink = make_sink()
    _write(sink, _batch(0), run_id="r1", shard=0, batch=0)
    _write(sink, _batch(5), run_id="r1", shard=1, batch=0)
    # When the run is finished, twice (a finish step redelivered)
    _finish(sink, "r1")
    _finish(sink, "r1")
    # Then the run's rows are all held, once
    assert _held(sink) == list(range(10))
    # And a sink opened anew on the same destination holds them too
    assert _held(make_sink()) == list(range(10))


# -- capabilities: declared by subclassing, and doing what they say ---------------------

#: Each capability class and the method it stands for (what the runtime used to probe).
CAPABILITIES = {BackfillAware: "for_backfill", ParquetWriter: "write_parquet",
                Sequenced: "with_key", SerialCommits: "commit_scope", KeyAudit: "repeated_keys"}


def test_a_sink_declares_exactly_the_capabilities_it_has(make_sink: Callable[[], Any]) -> None:
    # Given a sink
    sink = make_sink()
    # Then it names each capability among its bases exactly when it has the method, isinstance
    # (what the runtime asks) agrees, and a declared method is its own, not the stub
    assert_declares_exactly(sink, CAPABILITIES)


def test_a_backfill_adds_to_what_earlier_runs_loaded(make_sink: Callable[[], Any]) -> None:
    # Given a sink holding a finished run
    sink = make_sink()
    _write(sink, _batch(0), run_id="r1", shard=0, batch=0)
    _finish(sink, "r1")
    # When a backfill run loads other rows through the sink a backfill uses and finishes
    backfill = sink.for_backfill() if isinstance(sink, BackfillAware) else sink
    if isinstance(sink, BackfillAware):
        assert type(backfill) is type(sink) and backfill.describe().strip()
    _write(backfill, _batch(100, 3), run_id="b1", shard=0, batch=0)
    _finish(backfill, "b1")
    # Then both runs' rows are held: a backfill never replaces what other runs loaded
    assert _held(make_sink()) == [0, 1, 2, 3, 4, 100, 101, 102]


def test_parquet_bytes_are_held_like_a_frame(make_sink: Callable[[], Any]) -> None:
    # Given a sink
    sink = make_sink()
    if not isinstance(sink, ParquetWriter):
        # Then a sink that takes no Parquet bytes is loaded from frames: write_batch is enough
        assert _write(sink, _batch(0), run_id="r1", shard=0, batch=0) == 5
        assert _held(sink) == list(range(5))
        return
    # When a batch arrives as Parquet bytes (the staged file), twice, and another as a frame
    data = to_parquet_bytes(_batch(0))
    assert [sink.write_parquet(data, run_id="r1", shard=0, batch=0) for _ in range(2)] == [5, 5]
    _write(sink, _batch(5), run_id="r1", shard=0, batch=1)
    # Then both are held once, with the same values a frame write gives
    assert _held(sink) == list(range(10))
    assert sorted(sink.read_all()["v"]) == sorted(f"v{i}" for i in range(10))


def test_the_sinks_package_exports_sinks_without_importing_pandas() -> None:
    # Given a fresh interpreter, When etl.sinks is imported
    code = ("import sys, etl.sinks, etl.sinks.base\n"
            "heavy = [m for m in ('pandas', 'pyarrow', 'pymongo') if m in sys.modules]\n"
            "print(','.join(heavy) or 'none')\n"
            "from etl.sinks import MongoSink, ParquetSink, ParquetWriter\n"
            "from etl import ParquetSink as Again\n"
            "print(ParquetSink is Again, ParquetWriter in ParquetSink.__mro__, 'pymongo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parent.parent)
    # Then nothing heavy is imported until a class is used, and pymongo not even then
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["none", "True", "True", "False"]


def test_a_merge_keeps_the_newest_row_per_key_whatever_the_load_order(
        make_sink: Callable[[], Any]) -> None:
    # Given a sink that merges by key (a Parquet dataset does not: it holds every batch)
    sink = make_sink()
    if not (isinstance(sink, Sequenced) and sink.write_disposition == "merge"):
        pytest.skip(f"{sink.describe()} does not merge by key")
    newer = _batch(0).assign(v="newer")
    # When batch 1 (newer rows) loads before batch 0 (older rows of the same keys), and batch
    # 1 is redelivered after both
    _write(sink, newer, run_id="r1", shard=0, batch=1)
    _write(sink, _batch(0), run_id="r1", shard=0, batch=0)
    _write(sink, newer, run_id="r1", shard=0, batch=1)
    # Then each key is held once, with the row that comes last in source order
    held = sink.read_all().sort_values("id")
    assert held["id"].tolist() == list(range(5)) and set(held["v"]) == {"newer"}
    # And a later run's row of a key replaces it, an earlier run's does not
    _write(sink, _batch(0, 1).assign(v="backfill"), run_id="b1", shard=3, batch=0)
    _write(sink, _batch(1, 1).assign(v="stale"), run_id="r0", shard=9, batch=9)
    held = sink.read_all().set_index("id")["v"].to_dict()
    assert held == {0: "backfill", 1: "newer", 2: "newer", 3: "newer", 4: "newer"}
