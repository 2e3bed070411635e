"""SQLite result store: the embedded default. One row per job: indexed columns for queries,
the whole record as JSON. Status changes are read-check-write in one IMMEDIATE transaction."""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator

from etl.urls import mask_url
from results.base import dumps, loads, summarise
from results.errors import JobNotFound
from results.models import (DEFAULT_TTL, JobResult, Transition, check_transition, stamp_fields,
                            utcnow)

SCHEMA = """
CREATE TABLE IF NOT EXISTS JobResult (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, queue TEXT NOT NULL, run_id TEXT,
    duration REAL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS JobResult_run ON JobResult (run_id, created_at);
CREATE INDEX IF NOT EXISTS JobResult_status ON JobResult (status);
CREATE INDEX IF NOT EXISTS JobResult_queue ON JobResult (queue, created_at);
CREATE INDEX IF NOT EXISTS JobResult_expires ON JobResult (expires_at);
"""


class SQLiteResultStore:
    """ResultStore on one SQLite file (WAL, busy timeout, a connection per thread)."""

    def __init__(self, url: str) -> None:
        if not url.startswith("sqlite:///"):
            raise ValueError(f"SQLite URL must look like sqlite:///path.db, got {mask_url(url)!r}")
        self.url = mask_url(url)
        path = url[len("sqlite:///"):]
        self.path = path if path == ":memory:" else str(Path(path).resolve())
        if path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _row(job: JobResult) -> tuple[Any, ...]:
        assert job.expires_at is not None
        return (job.job_id, job.status, job.queue, job.run_id, job.duration,
                job.created_at.isoformat(), job.expires_at.isoformat(), dumps(job.to_dict()))

    def _live(self) -> str:
        return utcnow().isoformat()

    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        job.expires_at = utcnow() + (ttl or DEFAULT_TTL)
        if not job.history:
            job.history = [Transition(job.status, job.created_at)]
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO JobResult VALUES (?,?,?,?,?,?,?,?)", self._row(job))
        return job

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        with self._write() as conn:
            row = conn.execute("SELECT data FROM JobResult WHERE job_id = ? AND expires_at > ?",
                               (job_id, self._live())).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            job = JobResult.from_dict(loads(row[0]))
            check_transition(job_id, job.status, status)
            now = utcnow()
            for name, value in {**fields, **stamp_fields(status, now, job.started_at)}.items():
                setattr(job, name, value)
            job.status = status
            job.history.append(Transition(status, now, note))
            conn.execute("UPDATE JobResult SET status = ?, duration = ?, data = ? WHERE job_id = ?",
                         (job.status, job.duration, dumps(job.to_dict()), job_id))
            return job

    def get(self, job_id: str) -> JobResult | None:
        row = self._conn().execute("SELECT data FROM JobResult WHERE job_id = ? AND expires_at > ?",
                                   (job_id, self._live())).fetchone()
        return JobResult.from_dict(loads(row[0])) if row else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, JobResult] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for (data,) in self._conn().execute(
                    f"SELECT data FROM JobResult WHERE job_id IN ({marks}) AND expires_at > ?",
                    (*chunk, self._live())):
                job = JobResult.from_dict(loads(data))
                found[job.job_id] = job
        return found

    def get_status(self, job_id: str) -> str | None:
        row = self._conn().execute("SELECT status FROM JobResult WHERE job_id = ? AND expires_at > ?",
                                   (job_id, self._live())).fetchone()
        return row[0] if row else None

    def history(self, job_id: str) -> list[Transition]:
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job.history

    def delete(self, job_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM JobResult WHERE job_id = ?", (job_id,)).rowcount == 1

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        where, args = ["expires_at > ?"], [self._live()]
        for column, value in (("run_id", run_id), ("status", status), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._conn().execute(
            f"SELECT data FROM JobResult WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit))
        return [JobResult.from_dict(loads(data)) for (data,) in rows]

    def cleanup_expired(self) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM JobResult WHERE expires_at <= ?", (self._live(),)).rowcount

    def stats(self) -> dict[str, Any]:
        rows = self._conn().execute("SELECT status, queue, duration FROM JobResult WHERE expires_at > ?",
                                    (self._live(),))
        return summarise(rows)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
