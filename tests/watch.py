"""Looking at a test's processes and state from outside, as an operator would: rows a run
has loaded (read-only, while writers work), and which processes are alive."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def rows_loaded(workdir: Path, run_id: str | None = None) -> int:
    """Rows loaded so far in `workdir`'s state store (of `run_id`, else of every run);
    0 while the store does not exist or cannot be read yet."""
    db = workdir / ".etl" / "state.db"
    if not db.exists():
        return 0
    where, args = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(f"SELECT COALESCE(SUM(rows_loaded), 0) FROM TaskCheckpoint {where}",
                               args).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "(comm)", or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None \
                and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return sorted(found)
