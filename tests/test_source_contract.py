"""One contract, every source: FileSource over CSV, JSON lines and Parquet, SqlSource over a
SQLite file and (when it answers) PostgreSQL. A new source joins by adding a case to SOURCES.

The batches are read the way the runtime reads them (etl.runtime.runs opens a run: sample
the plan's columns, fit the plan, check it when the source is PlanChecked; etl.runtime
.embedded prepares the source; etl.runtime.batches.fetch reads each shard from cursor None,
passing each batch's cursor_end as the next `after`, until a batch is empty or exhausted).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pytest

from etl.core.errors import ConfigError
from etl.sources.base import PlanChecked, Reparsable, SchemaKinds, Source, WholeTable, Windowed
from etl.sources.windows import Window
from shards import HashShards, RangeShards, ShardPlan
from tests.conftest import port_open, service_missing
from tests.contracts import assert_declares_exactly

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Ids with gaps and out of order in the file, so cursors are not row numbers by accident.
IDS = [7, 3, 11, 1, 20, 4, 15, 9, 30, 2, 17, 25, 5, 12, 40, 8, 33, 6, 19, 10, 27, 14, 50]
MORE_IDS = [60, 61]
BATCH = 4  # rows per batch: several batches per shard


def _rows(ids: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "name": [f"n{i}" for i in ids],
                         "amount": [i * 0.5 for i in ids]})


class Case:
    """A source implementation over data it owns: `make` opens a new source on the data as
    it is now, `write` replaces the data."""

    def __init__(self, write: Callable[[pd.DataFrame], None], make: Callable[[], Any]) -> None:
        self.write, self.make = write, make


def _file_case(tmp_path: Path, fmt: str) -> Case:
    path = tmp_path / f"rows.{fmt}"

    def write(frame: pd.DataFrame) -> None:
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
        else:
            frame.to_parquet(path, index=False)

    from etl.sources.files import FileSource

    return Case(write, lambda: FileSource(str(path)))


def _sql_case(url: str) -> Iterator[Case]:
    sa = pytest.importorskip("sqlalchemy")
    from etl.sources.sql import SqlSource

    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = sa.Table(f"etl_contract_{uuid.uuid4().hex[:10]}", meta,
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("name", sa.String(40)), sa.Column("amount", sa.Float))

    def write(frame: pd.DataFrame) -> None:
        with engine.begin() as conn:
            conn.execute(table.delete())
            conn.execute(table.insert(), frame.to_dict("records"))

    meta.create_all(engine)
    made: list[Any] = []

    def make() -> Any:
        made.append(SqlSource(url, table=table.name, key="id"))
        return made[-1]

    try:
        yield Case(write, make)
    finally:
        for source in made:  # release the sources' pools before dropping their table
            source.close()
        meta.drop_all(engine)
        engine.dispose()


def _postgres_reachable() -> None:
    if not port_open("127.0.0.1", 5432):
        service_missing("PostgreSQL", "nothing listens on 127.0.0.1:5432")
    sa = pytest.importorskip("sqlalchemy")
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - no driver, no database, refused login
        service_missing(f"PostgreSQL at {POSTGRES_URL}", f"{type(exc).__name__}: {exc}")


SOURCES = ["file-csv", "file-jsonl", "file-parquet", "sql-sqlite", "sql-postgresql"]


@pytest.fixture(params=SOURCES)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    """Each source implementation, over the rows of IDS."""
    kind = request.param
    if kind.startswith("file-"):
        made = _file_case(tmp_path, kind[len("file-"):])
        made.write(_rows(IDS))
        yield made
        return
    if kind == "sql-postgresql":
        _postgres_reachable()
    url = POSTGRES_URL if kind == "sql-postgresql" else f"sqlite:///{tmp_path / 'rows.db'}"
    for made in _sql_case(url):
        made.write(_rows(IDS))
        yield made


# -- reading as the runtime does --------------------------------------------------------


def _fitted(source: Any, plan: ShardPlan) -> ShardPlan:
    """The plan fitted as a new run fits it (etl.runtime.runs.open_run)."""
    if isinstance(source, PlanChecked):
        source.check_plan(plan)
    columns = getattr(plan, "columns", None) or [plan.column]  # type: ignore[attr-defined]
    fitted = plan.fit(source.sample(list(columns)))
    source.prepare(fitted)
    return fitted


def _read_shard(source: Any, plan: ShardPlan, shard: int) -> list[Any]:
    """Every batch of `shard`, from cursor None to the end, as the fetch step reads it."""
    batches, after = [], None
    for _ in range(1000):  # a source that never ends its shard fails, not hangs
        batch = source.read_batch(plan, shard, after=after, limit=BATCH)
        assert batch.cursor_start == after
        assert batch.table.num_rows <= BATCH
        if not batch.table.num_rows:
            return batches
        batches.append(batch)
        if batch.exhausted:
            return batches
        after = batch.cursor_end
    raise AssertionError(f"shard {shard} was not exhausted after 1000 batches")


def _read_all_ids(source: Any, plan: ShardPlan) -> list[int]:
    fitted = _fitted(source, plan)
    return [int(i) for shard in range(fitted.shards) for batch in _read_shard(source, fitted, shard)
            for i in batch.table.column("id").to_pylist()]


def _plans(source: Any) -> list[ShardPlan]:
    """Plans every source can be read by, and hash shards for sources that take any plan."""
    plans: list[ShardPlan] = [RangeShards("id", 3)]
    if not isinstance(source, PlanChecked):
        plans.append(HashShards(["id"], 4))
    return plans


# -- the contract -------------------------------------------------------------------------


def test_a_source_describes_itself(case: Case) -> None:
    # Given a source, When it is described
    source = case.make()
    text = source.describe()
    # Then it says something, and it is a Source
    assert isinstance(text, str) and text.strip()
    assert isinstance(source, Source)


def test_the_fingerprint_is_stable_over_the_same_data_and_changes_with_it(case: Case) -> None:
    # Given two sources over the same data
    first, second = case.make(), case.make()
    # When each is fingerprinted, Then they agree (a resumed run accepts the source)
    assert isinstance(first.fingerprint(), str) and first.fingerprint() == second.fingerprint()
    # When the data changes, Then a source over it has another fingerprint
    case.write(_rows(IDS + MORE_IDS))
    assert case.make().fingerprint() != first.fingerprint()


def test_row_count_is_the_number_of_rows(case: Case) -> None:
    # Given a source over len(IDS) rows, When counted, Then the count is that number
    assert case.make().row_count() == len(IDS)
    # And after rows are added, a source over the data counts them too
    case.write(_rows(IDS + MORE_IDS))
    assert case.make().row_count() == len(IDS) + len(MORE_IDS)


def test_sample_returns_the_asked_columns(case: Case) -> None:
    # Given a source, When it is sampled on the shard column
    sample = case.make().sample(["id"])
    # Then the frame has exactly that column, with values of the rows spanning all of them
    assert list(sample.columns) == ["id"] and len(sample) >= 1
    values = {int(v) for v in sample["id"]}
    assert values <= set(IDS) and min(values) == min(IDS) and max(values) == max(IDS)


def test_the_batches_of_every_shard_hold_each_row_exactly_once(case: Case) -> None:
    source = case.make()
    for plan in _plans(source):
        # Given a fitted plan (a new run's), When every shard is read batch by batch
        ids = _read_all_ids(source, plan)
        # Then each row comes exactly once, whatever the plan
        assert sorted(ids) == sorted(IDS), plan.describe()


def test_a_batch_read_again_from_its_cursor_holds_the_same_rows(case: Case) -> None:
    # Given a fitted plan and the batches of its shards
    source = case.make()
    plan = _fitted(source, RangeShards("id", 2))
    for shard in range(plan.shards):
        batches = _read_shard(source, plan, shard)
        # Then the rows of a shard come in cursor order, batch after batch
        assert batches, f"shard {shard} has no rows"
        # When a batch is read again from the cursor it started at (a resumed fetch)
        for batch in batches:
            again = source.read_batch(plan, shard, after=batch.cursor_start, limit=BATCH)
            # Then it holds the same rows and ends at the same cursor
            assert again.table.column("id").to_pylist() == batch.table.column("id").to_pylist()
            assert again.cursor_end == batch.cursor_end and again.exhausted == batch.exhausted
        # And only the last batch says the shard is exhausted
        assert [b.exhausted for b in batches][:-1] == [False] * (len(batches) - 1)


# -- capabilities: declared by subclassing, and doing what they say ---------------------

#: Each capability class and the method it stands for (what the runtime used to probe).
CAPABILITIES = {Windowed: "windowed", PlanChecked: "check_plan", SchemaKinds: "schema_kinds",
                WholeTable: "table", Reparsable: "reparse"}


def test_a_source_declares_exactly_the_capabilities_it_has(case: Case) -> None:
    # Given a source
    source = case.make()
    # Then it names each capability among its bases exactly when it has the method, isinstance
    # (what the runtime asks) agrees, and a declared method is its own, not the stub
    assert_declares_exactly(source, CAPABILITIES)
    # And every source names the Source contract itself, defining each of its methods
    assert Source in type(source).__mro__
    for method in ("describe", "fingerprint", "row_count", "sample", "prepare", "read_batch"):
        assert getattr(type(source), method) is not getattr(Source, method), method


def test_a_windowed_source_reads_only_the_window(case: Case, tmp_path: Path) -> None:
    from etl.pipeline import Pipeline
    from etl.sinks.parquet import ParquetSink

    # Given a source, and a pipeline over it that backfills by id
    source = case.make()
    pipeline = Pipeline(name="contract", source=source, sink=ParquetSink(str(tmp_path / "out")),
                        key=["id"], shards=RangeShards("id", 2), window_column="id")
    if not isinstance(source, Windowed):
        # Then a source that cannot be windowed refuses a backfill clearly
        with pytest.raises(ConfigError, match="cannot be read by window"):
            pipeline.for_window("5", "20")
        return
    # When it is restricted to 5 <= id < 20
    window = Window("id", "5", "20")
    inside = source.windowed(window)
    # Then it is the same kind of source, knows its window, and the original does not
    assert type(inside) is type(source) and inside.window == window and source.window is None
    # And its rows, read as a run reads them, are exactly the window's, each once
    assert sorted(_read_all_ids(inside, RangeShards("id", 2))) == sorted(i for i in IDS if 5 <= i < 20)
    assert inside.row_count() == sum(5 <= i < 20 for i in IDS)
    # And a windowed source is other data: another fingerprint
    assert inside.fingerprint() != source.fingerprint()
    # And a backfill pipeline reads through the windowed source
    assert pipeline.for_window("5", "20").source.window == window


def test_a_source_takes_the_plans_it_says_it_takes(case: Case) -> None:
    source = case.make()
    if not isinstance(source, PlanChecked):
        # Given a source that does not check plans, When read by hash shards (not ranges)
        # Then each row still comes exactly once: it takes any plan
        assert sorted(_read_all_ids(source, HashShards(["id"], 5))) == sorted(IDS)
        return
    # Given a source that can only be split some ways
    # When checked against range shards on its key, Then it accepts them
    source.check_plan(RangeShards("id", 3))
    # When checked against hash shards, Then it refuses before any run exists
    with pytest.raises(ConfigError):
        source.check_plan(HashShards(["id"], 3))


def test_the_schema_a_run_records_names_the_columns_and_their_kinds(case: Case) -> None:
    from etl.drift import source_schema

    # Given a source
    source = case.make()
    expected = {"id": "integer", "name": "string", "amount": "float"}
    # When a run asks for its schema (from declared kinds, or from its whole table)
    schema = source_schema(source)
    # Then a source that can tell names every column with its kind, and any other says None
    assert schema == (expected if isinstance(source, (SchemaKinds, WholeTable)) else None)
    if isinstance(source, SchemaKinds):
        # And declared kinds are those of the data
        assert source.schema_kinds() == expected
    if isinstance(source, WholeTable):
        # And a source read whole holds every row and column of the data
        table = source.table()
        assert table.num_rows == len(IDS) and sorted(table.column("id").to_pylist()) == sorted(IDS)
        assert {"id", "name", "amount"} <= set(table.column_names)


def test_the_packages_export_sources_without_importing_pandas() -> None:
    # Given a fresh interpreter, When etl and etl.sources are imported
    code = ("import sys, etl, etl.sources, etl.sources.base\n"
            "heavy = [m for m in ('pandas', 'pyarrow', 'sqlalchemy', 'pymongo') if m in sys.modules]\n"
            "print(','.join(heavy) or 'none', set(etl.__all__) <= set(dir(etl)))\n"
            "from etl.sources import FileSource, SqlSource, Windowed\n"
            "from etl import FileSource as Again\n"
            "print(FileSource is Again, Windowed in SqlSource.__mro__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parent.parent)
    # Then nothing heavy is imported until a class is used, and the lazy names are the classes
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["none", "True", "True", "True"]
