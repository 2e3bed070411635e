"""Exactly once by key under crash: real `etl run` processes SIGKILLed while they load into a
Delta table and a PostgreSQL table, then resumed; two `etl worker`s on RabbitMQ merging into
one Delta table. After each story the destination must equal the pandas reference
(`drop_duplicates("id", keep="last")` over the feed): no key twice, no version lost."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster import RABBITMQ, Cluster
from tests.conftest import port_open, service_missing
from tests.test_cli import etl, etl_env
from tests.test_keys import _feed, _merge_sink, _pipeline

pytestmark = pytest.mark.slow

RUN = ["run", "-p", "feedpipes:feed", "--no-progress"]

#: Where each load is killed (the N-th time the point is passed): before the sink commits,
#: inside a SQL transaction, after the commit but before the state store counts the load,
#: after the count.
POINTS = {"delta": ["sink.before_commit:3", "load.after_sink:4", "load.after_count:2"],
          "postgresql": ["sink.before_commit:3", "sink.mid_transaction:2", "load.after_sink:4",
                         "load.after_count:2"]}


def _assert_reference(held: pd.DataFrame, feed: pd.DataFrame) -> None:
    assert held["id"].is_unique, "a key is held twice"
    want = feed.drop_duplicates("id", keep="last").set_index("id")["version"].sort_index()
    got = held.set_index("id")["version"].sort_index()
    assert got.astype("int64").equals(want.astype("int64"))


@pytest.mark.parametrize("kind", ["delta", "postgresql"])
def test_sigkill_during_loads_into_a_merge_sink_then_resume_leaves_the_reference(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    # Given a feed with repeated ids and a pipeline merging it into the sink
    feed = _feed(tmp_path)
    sink, read = _merge_sink(kind, tmp_path, request)
    _pipeline(tmp_path, sink)
    # When `etl run` is killed by SIGKILL at each crash point of a load in turn
    for point in POINTS[kind]:
        result = etl(tmp_path, *RUN, "--processes", "1", env={"ETL_CRASH_AT": point})
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
    # And once more at a moment picked at random, with two worker processes
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *RUN, "--processes", "2"],
                               cwd=tmp_path, env=etl_env(tmp_path), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(random.uniform(1.0, 2.5))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    # And the same command then runs to the end
    final = etl(tmp_path, *RUN)
    assert final.returncode == 0, final.stderr
    # Then the table equals the reference: each id once, its newest version
    _assert_reference(read(), feed)


def test_two_workers_on_rabbitmq_merge_into_one_delta_table(tmp_path: Path) -> None:
    pytest.importorskip("deltalake")
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ", "nothing listens on 127.0.0.1:5672")
    # Given a feed, a Delta merge pipeline, and two workers on a queue of this test's own
    feed = _feed(tmp_path)
    _pipeline(tmp_path, 'DeltaSink("out/feed")')
    cluster = Cluster(tmp_path, RABBITMQ)
    try:
        cluster.start_worker()
        cluster.start_worker()
        # When a run is sent and one worker is killed half-way and replaced
        run_id = cluster.enqueue("-p", "feedpipes:feed")
        deadline = time.monotonic() + 120
        while cluster.rows_loaded() < 4_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.workers[0].send_signal(signal.SIGKILL)
        cluster.start_worker()
        final = cluster.etl("run", "-p", "feedpipes:feed", "--run-id", run_id, "--wait",
                            "--no-progress", timeout=400)
        # Then the run completes and the table equals the reference
        assert final.returncode == 0, final.stderr
        from deltalake import DeltaTable

        _assert_reference(DeltaTable(str(tmp_path / "out" / "feed")).to_pandas(), feed)
    finally:
        cluster.stop()
