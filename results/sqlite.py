"""SQLite result store: the embedded default. One row per job: indexed columns for queries,
the whole record as JSON. Status changes are read-check-write in one IMMEDIATE transaction; `write_many` writes a
whole batch of them (and new records) in one.
Connections are handled as for the state store (etl.core.sqlite_db)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable, Sequence

from etl.core.sqlite_db import Connections, open_path, write
from etl.core.urls import mask_url
from results.base import job_history, dumps, loads, summarise
from results.changes import Change, Outcome, settle, to_read
from results.errors import JobNotFound
from results.models import (DEFAULT_TTL, JobResult, Transition, check_transition, mask_job,
                            ready_to_store, stamp_fields, utcnow)

SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, queue TEXT NOT NULL, run_id TEXT,
    duration REAL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {t}_run ON {t} (run_id, created_at);
CREATE INDEX IF NOT EXISTS {t}_status ON {t} (status);
CREATE INDEX IF NOT EXISTS {t}_queue ON {t} (queue, created_at);
CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at);
"""


class SQLiteResultStore:
    """ResultStore on one SQLite file (WAL, busy timeout, a connection per thread)."""

    def __init__(self, url: str, *, table: str = "JobResult") -> None:
        self.url = mask_url(url)
        self.path = open_path(url)
        self.table = table  # `<key_prefix>_JobResult` with a key_prefix: several share a file
        self._db = Connections(self.path)
        with write(self._db) as conn:
            for statement in filter(str.strip, SCHEMA.format(t=table).split(";")):
                conn.execute(statement)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._db.use() as conn:
            return conn.execute(sql, args).fetchall()

    @staticmethod
    def _row(job: JobResult) -> tuple[Any, ...]:
        assert job.expires_at is not None
        return (job.job_id, job.status, job.queue, job.run_id, job.duration,
                job.created_at.isoformat(), job.expires_at.isoformat(), dumps(job.to_dict()))

    def _live(self) -> str:
        return utcnow().isoformat()

    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        ready_to_store(job, ttl)
        with write(self._db) as conn:
            conn.execute(f"INSERT OR REPLACE INTO {self.table} VALUES (?,?,?,?,?,?,?,?)", self._row(job))
        return job

    def claim(self, job: JobResult, *, ttl: timedelta | None = None) -> bool:
        """`store` if no live record of the id exists: an expired row is dropped and the
        insert ignored on a live one, in one IMMEDIATE transaction (writers take turns)."""
        ready_to_store(job, ttl)
        with write(self._db) as conn:
            conn.execute(f"DELETE FROM {self.table} WHERE job_id = ? AND expires_at <= ?",
                         (job.job_id, self._live()))
            return conn.execute(f"INSERT OR IGNORE INTO {self.table} VALUES (?,?,?,?,?,?,?,?)",
                                self._row(job)).rowcount == 1

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        with write(self._db) as conn:
            row = conn.execute(f"SELECT data FROM {self.table} WHERE job_id = ? AND expires_at > ?",
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
            mask_job(job)  # the change, and anything kept before masking existed
            conn.execute(f"UPDATE {self.table} SET status = ?, duration = ?, data = ? WHERE job_id = ?",
                         (job.status, job.duration, dumps(job.to_dict()), job_id))
            return job

    def write_many(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply a batch of new records and status changes in one transaction: each job's
        record read once, moved through its changes in order, written once."""
        if not changes:
            return []
        with write(self._db) as conn:
            stored: dict[str, JobResult] = {}
            ids, live = to_read(changes), self._live()
            for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                chunk = ids[start:start + 900]
                for (data,) in conn.execute(
                        f"SELECT data FROM {self.table} WHERE job_id IN ({','.join('?' * len(chunk))})"
                        " AND expires_at > ?", (*chunk, live)):
                    job = JobResult.from_dict(loads(data))
                    stored[job.job_id] = job
            jobs, outcomes = settle(changes, stored)
            now, created, moved = utcnow(), [], []
            for settled in jobs:
                job = settled.final
                if job is None or not settled.changed:
                    continue
                mask_job(job)
                if settled.created is not None:
                    job.expires_at = now + (settled.created.ttl or DEFAULT_TTL)
                    created.append(self._row(job))
                else:
                    moved.append((job.status, job.duration, dumps(job.to_dict()), job.job_id))
            if created:
                conn.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?,?,?,?,?,?,?,?)", created)
            if moved:
                conn.executemany(f"UPDATE {self.table} SET status = ?, duration = ?, data = ? "
                                 "WHERE job_id = ?", moved)
        return outcomes

    def get(self, job_id: str) -> JobResult | None:
        rows = self._read(f"SELECT data FROM {self.table} WHERE job_id = ? AND expires_at > ?",
                          (job_id, self._live()))
        return JobResult.from_dict(loads(rows[0][0])) if rows else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, JobResult] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for (data,) in self._read(
                    f"SELECT data FROM {self.table} WHERE job_id IN ({marks}) AND expires_at > ?",
                    (*chunk, self._live())):
                job = JobResult.from_dict(loads(data))
                found[job.job_id] = job
        return found

    def get_status(self, job_id: str) -> str | None:
        rows = self._read(f"SELECT status FROM {self.table} WHERE job_id = ? AND expires_at > ?",
                          (job_id, self._live()))
        return rows[0][0] if rows else None

    def history(self, job_id: str) -> list[Transition]:
        return job_history(self, job_id)

    def delete(self, job_id: str) -> bool:
        with write(self._db) as conn:
            return conn.execute(f"DELETE FROM {self.table} WHERE job_id = ?", (job_id,)).rowcount == 1

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        where, args = ["expires_at > ?"], [self._live()]
        for column, value in (("run_id", run_id), ("status", status), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._read(
            f"SELECT data FROM {self.table} WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit))
        return [JobResult.from_dict(loads(data)) for (data,) in rows]

    def cleanup_expired(self) -> int:
        with write(self._db) as conn:
            return conn.execute(f"DELETE FROM {self.table} WHERE expires_at <= ?", (self._live(),)).rowcount

    def stats(self) -> dict[str, Any]:
        return summarise(self._read(f"SELECT status, queue, duration FROM {self.table} "
                                    "WHERE expires_at > ?", (self._live(),)), store="sqlite")

    def close(self) -> None:
        self._db.close()
