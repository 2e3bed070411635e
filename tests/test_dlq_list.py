"""`etl dlq list` shows each dead letter's last error and when it died, on RabbitMQ and Redis,
also for an error that is not retried (the message then carries no traceback, and a
RabbitMQ dead letter is the body as it was delivered); `etl dlq retry` says that workers run
the code they started with."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from tests.cluster import Cluster

PIPELINE = '''
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline, RetryPolicy
from etl.core.errors import ConfigError
from shards import RangeShards
from stages import Derive

HERE = Path(__file__).parent


def refuse(frame):
    if (HERE / "broken.flag").exists() and (frame["id"] == 42).any():
        raise ConfigError("currency column missing in the partner feed")
    return frame["id"] * 2


pipeline = Pipeline(
    name="refusing", source=FileSource(str(HERE / "rows.csv")),
    stages=[Derive("double", refuse)], sink=ParquetSink(str(HERE / "out" / "refusing")),
    key=["id"], shards=RangeShards("id", 2), batch_size=100,
    retry=RetryPolicy(max_retries=3, min_backoff_ms=50, max_backoff_ms=100,
                      permanent=(ConfigError,)),
)
'''


@pytest.mark.services
@pytest.mark.parametrize("cluster", ["rabbitmq", "redis"], indirect=True)
def test_dlq_list_shows_the_last_error_and_time_of_a_permanent_failure(cluster: Cluster) -> None:
    # Given a pipeline whose stage refuses the batch holding id 42 with a permanent error
    work = cluster.workdir
    pd.DataFrame({"id": range(400)}).to_csv(work / "rows.csv", index=False)
    (work / "refusing.py").write_text(PIPELINE)
    (work / "broken.flag").touch()
    cluster.start_worker()
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    first = cluster.etl("run", "-p", "refusing:pipeline", "--fresh", "--wait", "--no-progress",
                        timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr
    run_id = first.stdout.split("run ", 1)[1].split(":", 1)[0].strip()
    # When its dead letters are listed, as a table and as JSON
    table = cluster.etl("dlq", "list", "--run", run_id)
    listed = cluster.etl("dlq", "list", "--run", run_id, "--json")
    # Then the one dead letter carries its error, without the run/shard/batch prefix, and
    # the time it died
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter["actor"] == "etl_clean" and [letter["shard"], letter["batch"]] == [0, 0]
    assert letter["error"].endswith("Error: currency column missing in the partner feed")
    assert f"run {run_id}" not in letter["error"], letter["error"]
    assert letter["dead_since"] is not None
    assert before <= dt.datetime.fromisoformat(letter["dead_since"]) <= dt.datetime.now(dt.timezone.utc)
    assert "currency column missing" in table.stdout and "dead since" in table.stdout
    # When it is re-driven after the fix
    (work / "broken.flag").unlink()
    retried = cluster.etl("dlq", "retry", "--run", run_id)
    # Then the command says that workers started before the fix run the old code
    assert retried.returncode == 0 and "re-drove 1 message" in retried.stdout, retried.stderr
    assert "still run the old code" in retried.stderr and "restart them" in retried.stderr
