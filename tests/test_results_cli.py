"""`etl results` stats, delete and health, as a user runs them (a real process, a real
store file, and a Redis server with a key prefix)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from results import JobResult, open_results
from tests.test_cli import etl


def _fill(url: str) -> None:
    store = open_results(url)
    for i, status in enumerate(["completed", "completed", "failed", "queued"]):
        store.store(JobResult(job_id=f"c{i}", function="etl_load", status=status,
                              queue="etl" if i % 2 else "other", run_id="R1" if i < 3 else "R2"))
    store.close()


def test_stats_text_and_json_give_totals_rate_queues_and_store(tmp_path: Path) -> None:
    # Given four records, three finished (two completed)
    url = f"sqlite:///{tmp_path}/results.db"
    _fill(url)
    env = {"ETL_RESULTS_URL": url}
    # When stats are asked as JSON and as text
    asked = etl(tmp_path, "results", "stats", "--json", env=env)
    text = etl(tmp_path, "results", "stats", env=env)
    # Then both give total, by status, by queue, success rate and the store's kind
    assert asked.returncode == 0, asked.stderr
    stats = json.loads(asked.stdout)
    assert stats["total"] == 4 and stats["store"] == "sqlite"
    assert stats["by_status"] == {"completed": 2, "failed": 1, "queued": 1}
    assert stats["by_queue"] == {"etl": 2, "other": 2}
    assert abs(stats["success_rate"] - 2 / 3) < 1e-9
    assert "4 task(s) in sqlite; success rate 66.7%" in text.stdout
    assert "by queue:" in text.stdout and "other" in text.stdout


def test_delete_by_id_and_by_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/results.db"
    _fill(url)
    env = {"ETL_RESULTS_URL": url}
    # When one record is deleted by id, then a run's records
    one = etl(tmp_path, "results", "delete", "c3", env=env)
    run = etl(tmp_path, "results", "delete", "--run", "R1", env=env)
    # Then they are gone, and the counts are said
    assert one.returncode == 0 and "deleted 1 record(s)" in one.stdout
    assert run.returncode == 0 and "deleted 3 record(s)" in run.stdout
    assert open_results(url).stats()["total"] == 0
    # And an unknown id or no argument at all is one line, exit 2
    missing = etl(tmp_path, "results", "delete", "nope", env=env)
    assert missing.returncode == 2 and "no record of job(s) nope" in missing.stderr
    bare = etl(tmp_path, "results", "delete", env=env)
    assert bare.returncode == 2 and "JOB_ID" in bare.stderr


def test_health_reports_a_round_trip_or_an_outage(tmp_path: Path, redis_url: str) -> None:
    # Given a Redis result store with a key prefix
    url = f"{redis_url}?key_prefix=health{uuid.uuid4().hex[:6]}"
    # When its health is asked
    asked = etl(tmp_path, "results", "health", "--json", env={"ETL_RESULTS_URL": url})
    # Then one round trip was made, with its latencies, and the probe is gone
    assert asked.returncode == 0, asked.stderr
    report = json.loads(asked.stdout)
    assert report["ok"] is True and report["round_trip_ms"] >= report["read_ms"] > 0
    assert open_results(url).stats()["total"] == 0
    # And a store that does not answer is exit 3, one line
    down = etl(tmp_path, "results", "health", env={"ETL_RESULTS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 3 and len(down.stderr.strip().splitlines()) == 1
