"""Mistakes of the user or the machine end in one line and the documented exit status,
never a traceback or a flood: a read-only or full disk, a broken state file, a pipeline
module that does not import, S3 without credentials, a bad store URL."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.test_cli import _orders, _user_pipeline, etl

RUN = ["run", "-p", "mypipes:orders", "--no-progress"]


def _one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """The command ended with `code`, saying what happened without a traceback."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


@pytest.fixture
def mounted(tmp_path: Path):  # type: ignore[no-untyped-def]
    """mount(target, *options): a tmpfs or a read-only bind mount at `target`, undone after."""
    done: list[Path] = []

    def mount(target: Path, *args: str) -> None:
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here ({result.stderr.strip()}): needs root in a "
                        "container that allows mount")
        done.append(target)

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _read_only(mount, target: Path) -> None:  # type: ignore[no-untyped-def]
    mount(target, "--bind", str(target))
    result = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot remount read-only: {result.stderr.strip()}")


def test_a_read_only_output_dir_is_one_line_exit_3_before_the_run(tmp_path: Path, mounted) -> None:  # type: ignore[no-untyped-def]
    # Given a pipeline whose Parquet sink directory is on a read-only file system
    _orders(tmp_path, rows=2000)
    _user_pipeline(tmp_path)
    _read_only(mounted, tmp_path / "out" / "orders")
    # When it runs (embedded: the sink is probed before any work)
    result = etl(tmp_path, *RUN)
    # Then one line names the dataset and the refusal, exit 3, no run was started
    _one_line(result, 3, "parquet dataset out/orders", "read-only file system")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_full_disk_under_the_state_store_is_one_line_exit_3(tmp_path: Path, mounted) -> None:  # type: ignore[no-untyped-def]
    # Given .etl/ on a 600 KiB file system and 20,000 orders to load
    _orders(tmp_path, rows=20_000)
    _user_pipeline(tmp_path)
    mounted(tmp_path / ".etl", "-t", "tmpfs", "-o", "size=600k", "tmpfs")
    # When it runs
    result = etl(tmp_path, *RUN)
    # Then it ends with one line naming the database file and what to do, exit 3
    _one_line(result, 3, "disk is full", ".etl/")
    assert len(result.stderr.splitlines()) < 60, result.stderr


def test_a_full_disk_under_the_sink_fails_its_batches_in_a_few_lines(tmp_path: Path, mounted) -> None:  # type: ignore[no-untyped-def]
    # Given the sink directory on a 64 KiB file system
    _orders(tmp_path, rows=20_000)
    _user_pipeline(tmp_path)
    mounted(tmp_path / "out" / "orders", "-t", "tmpfs", "-o", "size=64k", "tmpfs")
    # When it runs
    result = etl(tmp_path, *RUN)
    # Then the batches that do not fit fail once each, summarised, no traceback
    _one_line(result, 1, "not complete")
    assert "No space left on device" in result.stderr
    assert len(result.stderr.splitlines()) < 40, result.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_broken_state_file_is_one_line_naming_it(tmp_path: Path, damage: str) -> None:
    # Given a project whose state.db is random bytes, or a real one cut after its first page
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    state = tmp_path / ".etl" / "state.db"
    if damage == "garbage":
        state.parent.mkdir()
        state.write_bytes(os.urandom(8192))
    else:
        assert etl(tmp_path, *RUN).returncode == 0
        with sqlite3.connect(state) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = state.read_bytes()
        # cut inside the second page: every table but the schema's own page is gone
        state.write_bytes(data[: 4096 + 512])
    # When a run and `etl status` read it
    for args in (RUN, ["status"]):
        result = etl(tmp_path, *args)
        # Then each is one line that names the file, exit 2
        _one_line(result, 2, str(state), "not a readable SQLite database")


@pytest.mark.parametrize("source,message", [
    ("x = (\n", "SyntaxError"),
    ("raise RuntimeError('no config for this environment')\n", "RuntimeError: no config"),
    ("from stages import Trim\nTrim(column=['a'])\n", "Trim: unknown argument 'column'"),
])
def test_a_pipeline_module_that_does_not_import_is_one_line(tmp_path: Path, source: str,
                                                             message: str) -> None:
    # Given a pipeline module with a syntax error, or one that raises while importing
    (tmp_path / "broken.py").write_text(source)
    # When it is run
    result = etl(tmp_path, "run", "-p", "broken:x", "--no-progress")
    # Then one line names the module, the error and where it is, exit 2
    _one_line(result, 2, "broken", message, "broken.py, line")


def test_s3_without_credentials_or_endpoint_is_one_line_exit_3(tmp_path: Path) -> None:
    # Given a pipeline reading an s3:// source
    (tmp_path / "s3pipe.py").write_text(
        "from etl import FileSource, ParquetSink, Pipeline\nfrom shards import HashShards\n"
        "x = Pipeline(name='s3p', source=FileSource('s3://nobucket/x.csv'), "
        "sink=ParquetSink('out'), key=['a'], shards=HashShards(['a'], 2))\n")
    bare = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("AWS_ACCESS_KEY_ID", None)
    # When it runs with no credentials anywhere
    no_credentials = subprocess.run(
        [*_etl(), "run", "-p", "s3pipe:x", "--no-progress"], cwd=tmp_path, text=True,
        capture_output=True, timeout=120,
        env={**{k: v for k, v in env.items() if not k.startswith("ETL_")}, "PYTHONPATH": str(tmp_path),
             **{k: v for k, v in bare.items() if v}})
    # Then one line says what to set, exit 3
    _one_line(no_credentials, 3, "AWS_ACCESS_KEY_ID")
    # And with credentials but an endpoint nobody listens on, one line, exit 3
    dead = etl(tmp_path, "run", "-p", "s3pipe:x", "--no-progress",
               env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                    "ETL_S3_ENDPOINT_URL": "http://127.0.0.1:1"})
    _one_line(dead, 3, "did not answer")


def _etl() -> list[str]:
    import sys

    return [sys.executable, "-m", "cli.main"]


@pytest.mark.parametrize("setting,url", [("ETL_OBJECTS_URL", "ftp://host/x"),
                                         ("ETL_RESULTS_URL", "ftp://host/x")])
def test_an_unknown_store_scheme_fails_before_a_run_is_created(tmp_path: Path, setting: str,
                                                               url: str) -> None:
    # Given a store URL with a scheme no backend handles
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    # When a run starts
    result = etl(tmp_path, *RUN, env={setting: url})
    # Then it is one line, exit 2, and no run record was left behind
    _one_line(result, 2, "ftp")
    state = tmp_path / ".etl" / "state.db"
    if state.exists():
        with sqlite3.connect(state) as conn:
            assert conn.execute("SELECT COUNT(*) FROM EtlRun").fetchone()[0] == 0


def test_part_files_follow_the_umask_and_a_killed_writes_temp_file_is_swept(tmp_path: Path) -> None:
    # Given a sink directory holding the temporary file of a write whose process was killed
    _orders(tmp_path)
    _user_pipeline(tmp_path)
    sink = tmp_path / "out" / "orders"
    sink.mkdir(parents=True)
    victim = subprocess.Popen(["sleep", "30"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    import re

    stale = sink / f".tmp-{re.sub(r'[^A-Za-z0-9_-]', '_', host)}.{victim.pid}.{uuid.uuid4().hex[:8]}"
    stale.write_bytes(b"half a file")
    # When the run completes under umask 022
    result = subprocess.run(["sh", "-c", f"umask 022 && exec {' '.join(_etl())} " + " ".join(RUN)],
                            cwd=tmp_path, text=True, capture_output=True, timeout=300,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("ETL_")},
                                 "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    # Then its part files are readable by others (0644), and the dead writer's temp is gone
    parts = sorted(sink.glob("part-*.parquet"))
    assert parts and {p.stat().st_mode & 0o777 for p in parts} == {0o644}
    assert not stale.exists()
    assert shutil.which("sh")
