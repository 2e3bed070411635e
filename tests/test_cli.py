"""The `etl` command as a user runs it: real subprocesses, real files, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from etl.core.urls import mask_url


def etl_env(workdir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an `etl` a user runs in `workdir`: no ETL_ setting of ours, the
    folder importable, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    base["PYTHONPATH"] = str(workdir)
    base.update(env or {})
    return base


def etl(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=workdir,
                          env=etl_env(workdir, env), text=True, capture_output=True, timeout=300)


def _user_pipeline(workdir: Path, *, stages: str = "[]", source: str = "orders.csv",
                   raw_landing: str = "auto") -> None:
    (workdir / "mypipes.py").write_text(textwrap.dedent(f"""
        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards
        from stages import *

        orders = Pipeline(
            name="orders",
            source=FileSource({source!r}),
            stages={stages},
            sink=ParquetSink("out/orders"),
            key=["order_id"],
            shards=HashShards(["order_id"], 3),
            batch_size=40,
            raw_landing={raw_landing!r},
        )
    """))


def _orders(workdir: Path, rows: int = 200, extra: str = "") -> None:
    lines = ["order_id,amount,sku"] + [f"{i},{i * 1.5},  sku{i % 7} " for i in range(rows)]
    (workdir / "orders.csv").write_text("\n".join(lines) + "\n" + extra)


def test_user_pipeline_runs_reports_and_quarantines(tmp_path: Path) -> None:
    # Given a user's pipeline module, a CSV with a broken line and a non-numeric amount
    _orders(tmp_path, extra="999,not-a-number,x\n1000,1,2,3,4\n")
    _user_pipeline(tmp_path, stages='[Trim(columns=["sku"]), Upper(columns=["sku"]), '
                                     'Cast({"amount": "float64"})]')
    # When it is run with 5 shards
    result = etl(tmp_path, "run", "-p", "mypipes:orders", "--shards", "5", "--no-progress")
    # Then it completes, and the summary counts the two bad rows as quarantined
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout
    status = json.loads(etl(tmp_path, "status", "--json").stdout)
    assert status["totals"]["rows_fetched"] == 202
    assert status["totals"]["rows_loaded"] == 200
    assert status["totals"]["rows_quarantined"] == 2
    assert status["run"]["plan"] == "hash(order_id)/5"
    loaded = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out" / "orders").glob("*.parquet"))
    assert sorted(loaded["order_id"]) == list(range(200))
    assert set(loaded["sku"]) == {f"SKU{i}" for i in range(7)}
    # And `etl checkpoints` and `etl describe` work on it
    assert "TaskCheckpoint" in etl(tmp_path, "checkpoints").stdout
    described = etl(tmp_path, "describe", "-p", "mypipes:orders").stdout
    assert "Upper(columns=['sku'])" in described and "hash(order_id)/3" in described


@pytest.mark.parametrize("setup,args,message", [
    (lambda d: _user_pipeline(d, source="missing.csv"), ["run", "-p", "mypipes:orders"],
     "source file not found: missing.csv"),
    (lambda d: (_orders(d), _user_pipeline(d, stages='[Upper(columns=["nope"])]')),
     ["run", "-p", "mypipes:orders", "--no-progress"], "unknown column(s) 'nope'"),
    (lambda d: None, ["run", "-p", "nosuchmodule:thing"], "cannot import pipeline module 'nosuchmodule'"),
    (lambda d: None, ["run", "-p", "not-a-spec"], "must look like package.module:attribute"),
    (lambda d: (d / "etl.toml").write_text("state_url = [broken"), ["run"], "cannot read"),
    (lambda d: None, ["status"], "no runs in"),
])
def test_user_mistakes_are_one_clear_line_not_a_traceback(tmp_path: Path, setup, args, message) -> None:  # type: ignore[no-untyped-def]
    # Given a mistake a user can make
    setup(tmp_path)
    # When etl runs
    result = etl(tmp_path, *args)
    # Then it fails with a message naming the problem, and no traceback
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_backend_url_names_the_supported_schemes(tmp_path: Path) -> None:
    result = etl(tmp_path, "run", env={"ETL_STATE_URL": "postgres://u:hunter2@db/x"})
    assert result.returncode == 2
    assert "unsupported state store URL scheme 'postgres'" in result.stderr
    assert "hunter2" not in result.stderr


def test_config_masks_passwords(tmp_path: Path) -> None:
    result = etl(tmp_path, "config", env={"ETL_STATE_URL": "mongodb://etl:hunter2@db:27017/etl"})
    assert result.returncode == 0
    assert "mongodb://etl:***@db:27017/etl" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert "environment" in result.stdout


def test_config_hides_the_api_token(tmp_path: Path) -> None:
    # Given an HTTP API token in the environment
    env = {"ETL_API_TOKEN": "tok-hunter2-secret"}
    # When the settings are shown, as a table and as JSON
    shown = [etl(tmp_path, "config", env=env), etl(tmp_path, "config", "--json", env=env)]
    # Then the token is set but never printed
    for result in shown:
        assert result.returncode == 0, result.stderr
        assert "tok-hunter2-secret" not in result.stdout + result.stderr
        assert "***" in result.stdout


@pytest.mark.parametrize("scheme", ["amqp://guest:s3cret@127.0.0.1:{port}/%2F", "redis://:s3cret@127.0.0.1:{port}/0"])
def test_a_broker_that_does_not_answer_is_one_line_and_exit_status_3(tmp_path: Path, scheme: str) -> None:
    from tests.conftest import free_port

    # Given a broker URL where nothing listens
    url = scheme.format(port=free_port())
    # When a command needs the broker
    for args in (["queues"], ["dlq", "list"]):
        result = etl(tmp_path, *args, env={"ETL_BROKER_URL": url})
        # Then it says so in one line, exit status 3, no traceback and no password
        assert result.returncode == 3, result.stderr
        assert "error: a service did not answer" in result.stderr
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_worker_refuses_a_queue_name_dramatiq_would_refuse(tmp_path: Path) -> None:
    # Given a broker URL, and a queue name with a space
    result = etl(tmp_path, "worker", "--queue", "etl", "--queue", "bad queue",
                 env={"ETL_BROKER_URL": "redis://127.0.0.1:1/0"})
    # Then the worker does not start: one clear line naming the option, no traceback
    assert result.returncode != 0
    assert "queue 'bad queue' (from --queue) must start" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url,warning", [
    ("redis://:s3cret@127.0.0.1:{port}/0", "the task goes on"),  # opens lazily, writes fail
    ("sqlite:////proc/etl-{port}/results.db", "going on without recording results"),  # cannot open
])
def test_a_result_store_that_does_not_answer_leaves_the_run_unrecorded_not_failed(
        tmp_path: Path, url: str, warning: str) -> None:
    from tests.conftest import free_port

    # Given a user's pipeline, and a result store that cannot be reached
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    url = url.format(port=free_port())
    # When the pipeline is run
    result = etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress",
                 env={"ETL_RESULTS_URL": url})
    # Then it completes, with warnings naming the store, any password masked
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout
    assert f"result store {mask_url(url)}" in result.stderr and warning in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    # But asking the result store itself is a one-line error
    asked = etl(tmp_path, "results", "stats", env={"ETL_RESULTS_URL": url})
    assert asked.returncode in (2, 3) and "Traceback" not in asked.stderr, asked.stderr
    assert "s3cret" not in asked.stderr


def test_a_run_with_a_row_adding_stage_still_adds_up(tmp_path: Path) -> None:
    # Given API-like orders whose items explode into one row each, one order without a list
    lines = [json.dumps({"order_id": i, "items": [f"sku{j}" for j in range(i % 3 + 1)]})
             for i in range(30)] + [json.dumps({"order_id": 30, "items": "not-a-list"})]
    (tmp_path / "orders.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "exploding.py").write_text(textwrap.dedent("""
        from etl import FileSource, ParquetSink, Pipeline
        from shards import HashShards
        from stages import Explode

        orders = Pipeline(name="items", source=FileSource("orders.jsonl"),
                          stages=[Explode("items", position="line")],
                          sink=ParquetSink("out/items"), key=["order_id", "line"],
                          shards=HashShards(["order_id"], 3), batch_size=7)
    """))
    # When it is run
    result = etl(tmp_path, "run", "-p", "exploding:orders", "--no-progress")
    # Then 31 rows in + 30 added = 60 loaded + 1 quarantined, and the summary says so
    assert result.returncode == 0, result.stderr
    shown = {cells[0]: cells[1] for cells in (
        [c.strip() for c in line.strip("│").split("│")]
        for line in result.stdout.splitlines() if line.startswith("│"))}
    assert (shown["rows in (fetched)"], shown["rows loaded"], shown["rows quarantined"],
            shown["rows added by stages"]) == ("31", "60", "1", "30")
    loaded = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out" / "items").glob("*.parquet"))
    assert len(loaded) == 60 and not loaded.duplicated(["order_id", "line"]).any()


def test_results_url_none_switches_recording_off(tmp_path: Path) -> None:
    # Given a user pipeline and results switched off
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    off = {"ETL_RESULTS_URL": "none"}
    # When it runs, Then it completes and no result store is made
    result = etl(tmp_path, "run", "-p", "mypipes:orders", "--no-progress", env=off)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / ".etl" / "results.db").exists()
    # And asking for results says in one line that none are recorded, exit 2
    listed = etl(tmp_path, "results", "list", env=off)
    assert listed.returncode == 2 and "results are not recorded here" in listed.stderr
    assert "Traceback" not in listed.stderr


def test_run_id_takes_up_the_runs_own_pipeline_and_shards_without_p(tmp_path: Path) -> None:
    # Given a run of a user's pipeline made with -p and --shards 5
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    first = etl(tmp_path, "run", "-p", "mypipes:orders", "--shards", "5", "--run-id", "orders-a",
                "--no-progress")
    assert first.returncode == 0, first.stderr
    # When it is named again by its id alone, as the README's run control shows
    again = etl(tmp_path, "run", "--run-id", "orders-a", "--no-progress")
    # Then it is that run, of that pipeline and plan (not the demo's: exit 2 before)
    assert again.returncode == 0, again.stderr
    assert "orders-a" in again.stdout + again.stderr and "demo" not in again.stderr
    # And another pipeline named with -p is still refused in one line
    other = etl(tmp_path, "run", "-p", "demo", "--run-id", "orders-a", "--no-progress")
    assert other.returncode == 2 and "belongs to pipeline orders" in other.stderr
