"""A sink that cannot be reached ends an embedded `etl run` before any work: one line on
stderr naming the sink (password masked) and the cause, exit status 3, at once, instead of
every batch failing and being retried. The probe (`Reachable.reach`, etl.sinks.base) writes
nothing; `etl describe --check` asks the same probe. A distributed sender does not probe:
the workers reach the sink, the sending machine may not.

Real `etl` processes on a real project folder, against the machine's MariaDB and PostgreSQL
(skipped when missing, a failure when CI is set).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from etl.checks import check_sink
from etl.core.errors import StoreUnwritable
from etl.sinks import DeltaSink, MongoSink, ParquetSink, Reachable, SqlSink
from tests.conftest import free_port, sql_server_url
from tests.test_user_mistakes import etl, one_line

#: The project's pipelines: a small feed into the sink FEED_SINK names.
PIPELINES = textwrap.dedent("""
    import os
    from etl import FileSource, ParquetSink, Pipeline, SqlSink
    from shards import HashShards

    def _feed(sink):
        return Pipeline(name="reach_feed", source=FileSource("feed.csv"), stages=[], sink=sink,
                        key=["id"], shards=HashShards(["id"], 2))

    def sql():
        return _feed(SqlSink(os.environ["FEED_DB"], table="sink_reachable_feed"))

    def parquet():
        return _feed(ParquetSink("out/feed"))
""")

#: Seconds an unreachable sink may take to be said: a start and one probe, no retries.
QUICK_S = 10.0


def project(tmp_path: Path) -> Path:
    """A user's project folder: a small CSV feed and the pipelines module."""
    (tmp_path / "feed.csv").write_text("id,name\n1,a\n2,b\n3,c\n")
    (tmp_path / "reachpipes.py").write_text(PIPELINES)
    return tmp_path


def run_timed(workdir: Path, attr: str, env: dict[str, str | None]) -> tuple[
        subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = etl(workdir, "run", "--no-progress", "-p", f"reachpipes:{attr}", env=env)
    return result, time.monotonic() - started


def _mariadb_wrong_password() -> tuple[str, str, str]:
    url = sql_server_url("mariadb").replace("mysql://", "mysql+pymysql://")
    return url.replace("root@", "root:wrong-pw-mariadb@"), "wrong-pw-mariadb", "Access denied"


def _postgres_unknown_role() -> tuple[str, str, str]:
    # the machine's PostgreSQL trusts every password: a role that does not exist is refused
    url = sql_server_url("postgresql").replace("postgres@", "nosuchrole:wrong-pw-role@")
    return url, "wrong-pw-role", 'role "nosuchrole" does not exist'


def _postgres_refused_port() -> tuple[str, str, str]:
    sql_server_url("postgresql")  # psycopg and a server to tell apart from a closed port
    return (f"postgresql://postgres:wrong-pw-port@127.0.0.1:{free_port()}/test", "wrong-pw-port",
            "Connection refused")


@pytest.mark.parametrize("case", [_mariadb_wrong_password, _postgres_unknown_role,
                                  _postgres_refused_port],
                         ids=["mariadb-wrong-password", "postgres-unknown-role",
                              "postgres-refused-port"])
def test_an_unreachable_sql_sink_is_one_line_exit_3_at_once(tmp_path: Path, case) -> None:  # type: ignore[no-untyped-def]
    # Given a pipeline loading into a SqlSink whose URL the database refuses
    url, password, cause = case()
    workdir = project(tmp_path)
    # When it is run embedded
    result, elapsed = run_timed(workdir, "sql", env={"FEED_DB": url})
    # Then one line names the sink with the password masked and the cause, exit 3, no traceback
    line = one_line(result, 3, "error: sql table sink_reachable_feed at ", ":***@", cause)
    # And the password is nowhere in what it printed
    assert password not in result.stdout and password not in result.stderr
    # And it said so at once: no run was opened, no batch was tried or retried
    assert "new run" not in result.stderr and result.stdout == ""
    assert elapsed < QUICK_S, (elapsed, line)


def test_a_parquet_folder_that_cannot_be_written_is_one_line_exit_3(tmp_path: Path) -> None:
    # Given a Parquet sink whose folder's parent is a file (root writes anywhere else)
    workdir = project(tmp_path)
    (workdir / "out").write_text("not a folder")
    # When it is run
    result, elapsed = run_timed(workdir, "parquet", env={})
    # Then one line names the dataset and what is in the way, exit 3, before any work
    one_line(result, 3, "error: parquet dataset out/feed (replace): cannot write in ",
             "is not a folder")
    assert "new run" not in result.stderr and elapsed < QUICK_S


def test_a_distributed_sender_does_not_probe_the_sink(tmp_path: Path, redis_url: str) -> None:
    # Given a SqlSink nobody answers for, and the run sent to Redis on a queue of its own
    import redis

    workdir = project(tmp_path)
    queue = f"reach_{uuid.uuid4().hex[:10]}"
    env = {"FEED_DB": f"postgresql://postgres:pw@127.0.0.1:{free_port()}/test",
           "ETL_BROKER_URL": redis_url, "ETL_QUEUE": queue}
    try:
        # When it is sent without waiting
        result = etl(workdir, "run", "--no-progress", "-p", "reachpipes:sql", env=env)
        # Then it is enqueued (the workers reach the sink; the sender may not), exit 0
        assert result.returncode == 0, result.stderr
        assert "enqueued" in result.stderr and result.stdout.strip()
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in list(client.scan_iter(f"*{queue}*")):
            client.delete(key)
        client.close()


# -- the probe itself, in process ----------------------------------------------------------


def test_the_sinks_are_reachable_and_their_probe_writes_nothing(tmp_path: Path,
                                                                mongo_client: object) -> None:
    # Given each sink on a local destination that does not exist yet
    parquet = ParquetSink(str(tmp_path / "p" / "q"))
    delta = DeltaSink(f"file://{tmp_path / 'd'}", key=["id"])
    sqlite = SqlSink(f"sqlite:///{tmp_path / 'rows.db'}", table="t")
    mongo = MongoSink("mongodb://db/x", collection="c", key=["id"], client=mongo_client)
    # When each is probed, Then each answers and nothing was made
    assert all(isinstance(s, Reachable) for s in (parquet, delta, sqlite, mongo))
    assert parquet.reach() == f"the folder can be made ({tmp_path} is writable)"
    assert delta.reach() == f"the folder can be made ({tmp_path} is writable)"
    assert sqlite.reach() == "the database file can be made"
    assert mongo.reach() == "the server answers"
    assert sorted(os.listdir(tmp_path)) == []
    # And a SQLite file in a folder that does not exist, or under a file, is refused
    with pytest.raises(StoreUnwritable, match="does not exist"):
        SqlSink(f"sqlite:///{tmp_path / 'no' / 'rows.db'}", table="t").reach()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnwritable, match="is not a folder"):
        ParquetSink(str(tmp_path / "file" / "out")).reach()


def test_a_delta_table_on_s3_is_probed_with_its_options(s3_endpoint: str, s3_bucket: str) -> None:
    # Given Delta sinks on S3 (moto), one in a bucket that is there, one in a bucket that is not
    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    there = DeltaSink(f"s3://{s3_bucket}/t", key=["id"], storage_options=options)
    missing = DeltaSink("s3://no-such-bucket-reach/t", key=["id"], storage_options=options)
    # When each is checked, Then the first answers and the second fails in one line
    assert check_sink(there).detail.endswith(f": bucket {s3_bucket} answers")
    failed = check_sink(missing)
    assert failed.failed and "404" in failed.detail and "\n" not in failed.detail
    assert "testing" not in failed.detail  # the storage options are masked


def test_a_sink_without_the_capability_is_not_checked() -> None:
    # Given a sink that only writes (no reach)
    class Plain:
        def describe(self) -> str:
            return "plain sink"

        def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
            return len(frame)

    # When checked, Then it passes with a note that it was not probed
    checked = check_sink(Plain())
    assert not checked.failed
    assert checked.detail == "plain sink: not checked (Plain has no reachability check)"
