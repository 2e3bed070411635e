"""SQLite connections across processes: many `etl` processes may open one new database."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from etl.core.sqlite_db import Connections


def _open_and_write(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # every process opens at the same moment
    try:
        with Connections(path).use() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS seen (pid INTEGER)")
            conn.execute("INSERT INTO seen VALUES (1)")
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))


def test_processes_opening_one_new_database_at_once_all_get_it_in_wal_mode(tmp_path: Path) -> None:
    fork = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for trial in range(40):
        # Given a database file that does not exist yet, and 8 processes started together
        path = str(tmp_path / f"state-{trial}.db")
        barrier, results = fork.Barrier(8), fork.Queue()
        processes = [fork.Process(target=_open_and_write, args=(path, barrier, results))
                     for _ in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        # When each opens it and writes
        outcomes += [results.get(timeout=10) for _ in processes]
        # Then the database is in WAL mode and holds every write
        with Connections(path).use() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 8
    # And no process was refused with "database is locked"
    assert [o for o in outcomes if o != "ok"] == []
