"""`etl worker --burst`: work the queue until it is empty and nothing is in flight, then exit
0 (arq's burst mode), on the real brokers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import Cluster, broker_url
from tests.test_keys import _feed, _pipeline


@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_a_burst_worker_finishes_the_run_and_exits(tmp_path: Path, kind: str) -> None:
    # Given a run of 12,000 rows sent to a queue of this test's own, no worker running
    _feed(tmp_path)
    _pipeline(tmp_path, 'ParquetSink("out/feed")', stages="[]")
    cluster = Cluster(tmp_path, broker_url(kind))
    try:
        run_id = cluster.enqueue("-p", "feedpipes:feed")
        assert not cluster.complete(run_id)
        # When a burst worker with two processes is started
        result = cluster.etl("worker", "--burst", "--processes", "2", timeout=240)
        # Then it exits 0 on its own, with the run complete and every row loaded
        assert result.returncode == 0, result.stderr[-3000:]
        assert cluster.complete(run_id)
        assert cluster.rows_loaded() == 12_000
        # And a burst worker on an empty queue exits at once
        again = cluster.etl("worker", "--burst", timeout=60)
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        cluster.stop()
