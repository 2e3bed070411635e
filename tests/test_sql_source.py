"""A database table as a source, on the real PostgreSQL and MariaDB of this machine:
range shards by a unique key, keyset batches, exactly once under SIGKILL, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import port_open, service_missing

sa = pytest.importorskip("sqlalchemy")

DATABASES = {
    "postgresql": ("postgresql+psycopg://postgres@127.0.0.1:5432/test", 5432, "PostgreSQL"),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test", 3306, "MariaDB"),
}
ROWS = 30_000


def placed(i: int) -> datetime:
    """Row i was placed i minutes after the start of 2026 (naive UTC)."""
    return datetime(2026, 1, 1) + timedelta(minutes=i)


class Table:
    """A table of its own in a real database, dropped after the test."""

    def __init__(self, url: str) -> None:
        self.url, self.name = url, f"etl_src_{uuid.uuid4().hex[:10]}"
        self.engine = sa.create_engine(url)
        self.meta = sa.MetaData()
        self.table = sa.Table(self.name, self.meta,
                              sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                              sa.Column("name", sa.String(40)), sa.Column("amount", sa.Float),
                              sa.Column("ok", sa.Boolean), sa.Column("placed", sa.DateTime))
        self.meta.create_all(self.engine)

    def insert(self, ids: range | list[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), [{"id": i, "name": f"n{i}", "amount": i * 0.5,
                                                "ok": i % 2 == 0, "placed": placed(i)} for i in ids])

    def frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(self.table).order_by(self.table.c.id), conn)

    def drop(self) -> None:
        self.meta.drop_all(self.engine)
        self.engine.dispose()


@pytest.fixture(params=sorted(DATABASES))
def table(request: pytest.FixtureRequest) -> Iterator[Table]:
    url, port, what = DATABASES[request.param]
    if not port_open("127.0.0.1", port):
        service_missing(what, f"nothing listens on 127.0.0.1:{port}")
    made = Table(url)
    try:
        yield made
    finally:
        made.drop()


def _pipeline(workdir: Path, table: Table, *, shards: str = 'RangeShards("id", 6)',
              key: str = "id") -> None:
    (workdir / "frompg.py").write_text(textwrap.dedent(f"""
        from etl import ParquetSink, Pipeline, SqlSource
        from shards import HashShards, RangeShards

        pipeline = Pipeline(name="fromsql", key=["{key}"], batch_size=2_000, shards={shards},
                            source=SqlSource("{table.url}", table="{table.name}", key="{key}"),
                            sink=ParquetSink("out/fromsql"), window_column="placed")
    """))


def etl(workdir: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), os.getcwd()])
    env["ETL_LEASE_TTL"] = "2"  # a killed run's leases lapse soon, so the next one goes on
    if crash_at:
        env["ETL_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "cli.main", *args, "--no-progress"], cwd=workdir,
                          env=env, text=True, capture_output=True, timeout=300)


def _sink(workdir: Path) -> pd.DataFrame:
    files = sorted((workdir / "out" / "fromsql").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_a_table_loads_exactly_once_through_kills_and_a_new_run_sees_new_rows(
        tmp_path: Path, table: Table) -> None:
    # Given a table of 30,000 rows (even ids only) and a pipeline over it in 6 range shards
    table.insert(range(0, 2 * ROWS, 2))
    _pipeline(tmp_path, table)
    # When a single-process `etl run` is SIGKILLed after its 3rd sink write, then after it
    # counted its 4th load, and run again (with the default worker processes)
    for crash_at in ("load.after_sink:3", "load.after_count:4"):
        killed = etl(tmp_path, "run", "-p", "frompg:pipeline", "--processes", "1",
                     crash_at=crash_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = etl(tmp_path, "run", "-p", "frompg:pipeline")
    # Then the run completes, and the sink holds every row of the table exactly once
    assert done.returncode == 0 and "completed" in done.stdout, done.stderr
    sink, source = _sink(tmp_path), table.frame()
    assert len(sink) == ROWS and not sink["id"].duplicated().any()
    pd.testing.assert_frame_equal(sink.sort_values("id").reset_index(drop=True)[source.columns],
                                  source, check_dtype=False)
    # When odd ids are inserted between the loaded ones, and a column is added
    table.insert(range(1, 2001, 2))
    with table.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN note VARCHAR(10)"))
    again = etl(tmp_path, "run", "-p", "frompg:pipeline")
    # Then a new run loads the table as it is now, and says its schema changed
    assert again.returncode == 0 and "new run" in again.stderr, again.stderr
    assert "schema changed" in again.stderr and "unexpected note" in again.stderr
    sink = _sink(tmp_path)
    assert len(sink) == ROWS + 1000 and not sink["id"].duplicated().any()
    # And running it once more loads nothing
    idle = etl(tmp_path, "run", "-p", "frompg:pipeline")
    assert idle.returncode == 0 and "already complete" in idle.stderr, idle.stderr


def test_backfills_by_window_load_each_window_once(tmp_path: Path, table: Table) -> None:
    # Given a table of orders placed a minute apart (even ids), backfilled by day
    table.insert(range(0, 2 * ROWS, 2))
    _pipeline(tmp_path, table)
    day = ["backfill", "-p", "frompg:pipeline", "--start", "2026-01-02", "--end", "2026-01-03"]
    # When one day and then the next two are backfilled, and the first day is triggered again
    first = etl(tmp_path, *day)
    second = etl(tmp_path, "backfill", "-p", "frompg:pipeline", "--start", "2026-01-03T00:00",
                 "--end", "2026-01-05T00:00")
    again = etl(tmp_path, *day)
    # Then each window's rows are loaded, once, and the repeated trigger loads nothing
    assert first.returncode == second.returncode == again.returncode == 0, again.stderr
    assert "already complete" in again.stderr
    sink = _sink(tmp_path)
    expected = [i for i in range(0, 2 * ROWS, 2) if 1440 <= i < 4 * 1440]
    assert sorted(sink["id"]) == expected and len(expected) == 2160
    assert (sink["placed"] >= datetime(2026, 1, 2)).all() and (sink["placed"] < datetime(2026, 1, 5)).all()


@pytest.mark.parametrize("change,message", [
    (lambda w, t: _pipeline(w, t, shards='HashShards(["id"], 4)'), "not hash(id)/4: only key ranges can be pushed down to SQL"),
    (lambda w, t: _pipeline(w, t, shards='RangeShards("name", 4)', key="name"),
     "is VARCHAR(40), not an integer column"),
    (lambda w, t: (w / "frompg.py").write_text((w / "frompg.py").read_text().replace(
        t.name, "no_such_table_here")), "no such table"),
    (lambda w, t: (w / "frompg.py").write_text((w / "frompg.py").read_text().replace(
        "postgres@", "nobody:s3cret@").replace("root@", "nobody:s3cret@")), "cannot connect"),
])
def test_mistakes_are_one_clear_line(tmp_path: Path, table: Table, change, message) -> None:  # type: ignore[no-untyped-def]
    # Given a table and a pipeline with one mistake in it
    table.insert(range(100))
    _pipeline(tmp_path, table)
    change(tmp_path, table)
    # When it is run
    result = etl(tmp_path, "run", "-p", "frompg:pipeline")
    # Then it fails with one line that names the problem, and no password or traceback:
    # exit 2 for a mistake in the pipeline, 3 for a database that refuses the login
    status = 3 if message == "cannot connect" else 2
    assert result.returncode == status and "new run" not in result.stderr, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


def test_a_key_that_is_not_unique_is_refused(tmp_path: Path, table: Table) -> None:
    # Given a table whose chosen key has no unique index
    table.insert(range(100))
    _pipeline(tmp_path, table)
    text = (tmp_path / "frompg.py").read_text().replace('key="id"', 'key="amount_id"')
    (tmp_path / "frompg.py").write_text(text.replace('RangeShards("id"', 'RangeShards("amount_id"')
                                        .replace('key=["id"]', 'key=["amount_id"]'))
    with table.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN amount_id INTEGER"))
        conn.execute(sa.text(f"UPDATE {table.name} SET amount_id = id % 7"))
    # When it is run
    result = etl(tmp_path, "run", "-p", "frompg:pipeline")
    # Then it is refused before anything is read: pages over a non-unique key lose rows
    assert result.returncode == 2, result.stderr
    assert "must be the primary key or have a unique index" in result.stderr


@given(low=st.integers(-10**12, 10**12), width=st.integers(0, 10**9), shards=st.integers(1, 40),
       keys=st.lists(st.integers(-2 * 10**12, 2 * 10**12), min_size=1, max_size=50))
def test_the_ranges_pushed_down_to_sql_are_the_shards_a_file_source_would_assign(
        low: int, width: int, shards: int, keys: list[int]) -> None:
    from etl.sources.sql import SqlSource
    from shards import RangeShards

    # Given a range plan fitted on a key's MIN and MAX, and keys inside and outside that range
    plan = RangeShards("id", shards).fit(pd.DataFrame({"id": [low, low + width]}))
    source = SqlSource("postgresql://unused", table="t", key="id")
    ranges = [source._shard_range(plan, shard) for shard in range(shards)]
    assigned = plan.assign(pd.DataFrame({"id": keys}))
    for key, shard in zip(keys, assigned):
        # Then each key falls in exactly one shard's SQL range: the one assign() gives it
        holders = [i for i, (lo, hi) in enumerate(ranges)
                   if (lo is None or key >= lo) and (hi is None or key < hi)]
        assert holders == [int(shard)]


def test_workers_on_a_broker_page_a_table_each_process_with_its_own_connections(
        table: Table, cluster) -> None:  # type: ignore[no-untyped-def]
    # Given a table, and two `etl worker` processes on RabbitMQ sharing the state store
    table.insert(range(0, 2 * ROWS, 2))
    _pipeline(cluster.workdir, table)
    cluster.start_worker()
    cluster.start_worker()
    # When the run is sent and followed to its end
    result = cluster.etl("run", "-p", "frompg:pipeline", "--fresh", "--wait", "--no-progress")
    # Then every row of the table is in the sink once
    assert result.returncode == 0 and "completed" in result.stdout, result.stderr
    sink = _sink(cluster.workdir)
    assert len(sink) == ROWS and sorted(sink["id"]) == list(range(0, 2 * ROWS, 2))


def test_a_source_can_name_its_schema_and_columns(tmp_path: Path, table: Table) -> None:
    from etl.sources.sql import SqlSource
    from shards import RangeShards

    # Given a table, read through its schema-qualified name and two of its columns
    table.insert(range(50))
    schema = "public" if table.url.startswith("postgresql") else "test"
    source = SqlSource(table.url, table=table.name, key="id", schema=schema,
                       columns=["name", "amount"])
    plan = RangeShards("id", 2).fit(source.sample(["id"]))
    # When both shards are read to their end in batches of 10
    seen = []
    for shard in range(2):
        after, exhausted = None, False
        while not exhausted:
            batch = source.read_batch(plan, shard, after=after, limit=10)
            seen.append(batch.table.to_pandas())
            after, exhausted = batch.cursor_end, batch.exhausted
    # Then every row comes once, with the key and just those columns, and the kinds are known
    rows = pd.concat(seen, ignore_index=True)
    assert list(rows.columns) == ["id", "name", "amount"]
    assert sorted(rows["id"]) == list(range(50))
    assert source.schema_kinds() == {"id": "integer", "name": "string", "amount": "float"}
    assert source.describe().startswith(f"sql table {schema}.{table.name} at ")
