"""SQL result store: PostgreSQL and MariaDB/MySQL through SQLAlchemy (the `sql` extra).

One row per job, as in the SQLite store: indexed columns for queries (status, queue, run,
creation and expiry as epoch seconds) and the whole record as JSON. A status change, and a
batch of them (`write_many`), reads the rows it moves with SELECT ... FOR UPDATE in one
transaction, so two workers moving one job take turns and the second sees the first's
status: only one can start it. New records are upserts (ON CONFLICT / ON DUPLICATE KEY).
The table is `JobResult`, or `<key_prefix>_JobResult`; it is made on first use.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from etl.core.errors import ConfigError
from etl.core.sql_engines import ProcessEngines
from etl.core.urls import mask_url, with_sql_driver
from results.base import dumps, job_history, loads, summarise
from results.changes import Change, Outcome, settle, to_read
from results.errors import JobNotFound
from results.models import (DEFAULT_TTL, JobResult, Transition, check_transition, mask_job,
                            ready_to_store, stamp_fields, utcnow)

_KEY = sa.String(191)  # MySQL's longest indexable utf8mb4 VARCHAR


def _table(name: str) -> sa.Table:
    data = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("job_id", _KEY, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("queue", _KEY, nullable=False),
        sa.Column("run_id", _KEY),
        sa.Column("duration", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("data", data, nullable=False),
        sa.Index(f"{name}_run", "run_id", "created_at"),
        sa.Index(f"{name}_status", "status"),
        sa.Index(f"{name}_queue", "queue", "created_at"),
        sa.Index(f"{name}_expires", "expires_at"))


def open_engine(url: str) -> Any:
    """A SQLAlchemy engine for `url` through the driver the `sql` extra installs (psycopg 3,
    PyMySQL); ConfigError (one line) for a malformed URL or a driver not installed."""
    full = with_sql_driver(url)
    if full.startswith(("mysql", "mariadb")) and "charset=" not in full:
        full += ("&" if "?" in full else "?") + "charset=utf8mb4"
    try:
        return sa.create_engine(full, pool_pre_ping=True)
    except ImportError as exc:
        raise ConfigError(f"result store {mask_url(url)} needs its driver ({exc.name}): "
                          "pip install 'dramatiq-etl[sql]'") from None
    except Exception as exc:  # noqa: BLE001 - a malformed URL
        raise ConfigError(f"cannot use result store URL {mask_url(url)}: "
                          f"{type(exc).__name__}: {mask_url(str(exc))}") from None


class SqlResultStore:
    """ResultStore on a PostgreSQL or MariaDB/MySQL table."""

    def __init__(self, url: str, *, table: str = "JobResult") -> None:
        self.url = mask_url(url)
        self._engines = ProcessEngines(lambda: open_engine(url))
        self.table = _table(table)
        self.table.create(self._engines.get(), checkfirst=True)
        self.kind = self._engines.get().dialect.name

    # -- helpers ---------------------------------------------------------------------------
    def _row(self, job: JobResult) -> dict[str, Any]:
        assert job.expires_at is not None
        return {"job_id": job.job_id, "status": job.status, "queue": job.queue,
                "run_id": job.run_id, "duration": job.duration,
                "created_at": job.created_at.timestamp(), "expires_at": job.expires_at.timestamp(),
                "data": dumps(job.to_dict())}

    def _upsert(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Insert `rows`, replacing any row of the same job id."""
        if not rows:
            return
        columns = [c.name for c in self.table.columns if c.name != "job_id"]
        if self.kind == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            statement = insert(self.table)
            statement = statement.on_conflict_do_update(
                index_elements=["job_id"], set_={c: statement.excluded[c] for c in columns})
        else:
            from sqlalchemy.dialects.mysql import insert

            statement = insert(self.table)
            statement = statement.on_duplicate_key_update(
                {c: statement.inserted[c] for c in columns})
        conn.execute(statement, rows)

    def _locked(self, conn: Any, ids: list[str]) -> dict[str, JobResult]:
        """The live records of `ids`, their rows locked until the transaction ends (in id
        order, so two batches lock shared rows in the same order and cannot deadlock)."""
        found: dict[str, JobResult] = {}
        t = self.table
        ordered = sorted(set(ids))
        for start in range(0, len(ordered), 1000):
            chunk = ordered[start:start + 1000]
            rows = conn.execute(sa.select(t.c.data, t.c.expires_at)
                                .where(t.c.job_id.in_(chunk)).order_by(t.c.job_id)
                                .with_for_update()).all()
            now = time.time()
            for data, expires in rows:
                if expires > now:
                    job = JobResult.from_dict(loads(data))
                    found[job.job_id] = job
        return found

    def _live(self) -> Any:
        return self.table.c.expires_at > time.time()

    # -- writes ----------------------------------------------------------------------------
    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        ready_to_store(job, ttl)
        with self._engines.get().begin() as conn:
            self._upsert(conn, [self._row(job)])
        return job

    def claim(self, job: JobResult, *, ttl: timedelta | None = None) -> bool:
        """`store` if no live record of the id exists. A plain INSERT, which the primary key
        lets only one racer commit (the others wait for it, then fail with an IntegrityError);
        a row found there is replaced only if it expired, by an UPDATE conditional on that
        (a racer waiting on its row lock reads the winner's new expiry, and matches nothing).
        Not a DELETE of the expired row then INSERT: on InnoDB the DELETE's gap locks make
        two racers for a new id deadlock."""
        ready_to_store(job, ttl)
        row = self._row(job)
        try:
            with self._engines.get().begin() as conn:
                conn.execute(self.table.insert(), [row])
            return True
        except sa.exc.IntegrityError:
            pass  # a record of this id is there: take its place only if it expired
        t = self.table
        del row["job_id"]
        with self._engines.get().begin() as conn:
            return conn.execute(t.update().where(
                t.c.job_id == job.job_id, t.c.expires_at <= time.time()).values(row)).rowcount == 1

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        with self._engines.get().begin() as conn:
            job = self._locked(conn, [job_id]).get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            check_transition(job_id, job.status, status)
            now = utcnow()
            for name, value in {**fields, **stamp_fields(status, now, job.started_at)}.items():
                setattr(job, name, value)
            job.status = status
            job.history.append(Transition(status, now, note))
            mask_job(job)
            conn.execute(self.table.update().where(self.table.c.job_id == job_id).values(
                status=job.status, duration=job.duration, data=dumps(job.to_dict())))
            return job

    def write_many(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply a batch of new records and status changes in one transaction: the rows it
        moves read and locked at once, each job written once."""
        if not changes:
            return []
        with self._engines.get().begin() as conn:
            ids = to_read(changes)
            jobs, outcomes = settle(changes, self._locked(conn, ids) if ids else {})
            now, created, moved = utcnow(), [], []
            for settled in jobs:
                job = settled.final
                if job is None or not settled.changed:
                    continue
                mask_job(job)
                if settled.created is not None:
                    job.expires_at = now + (settled.created.ttl or DEFAULT_TTL)
                    job.updated_at = job.updated_at or now
                    created.append(self._row(job))
                else:
                    moved.append({"key": job.job_id, "status": job.status,
                                  "duration": job.duration, "data": dumps(job.to_dict())})
            self._upsert(conn, created)
            if moved:
                t = self.table
                conn.execute(t.update().where(t.c.job_id == sa.bindparam("key")).values(
                    status=sa.bindparam("status"), duration=sa.bindparam("duration"),
                    data=sa.bindparam("data")), moved)
        return outcomes

    def delete(self, job_id: str) -> bool:
        with self._engines.get().begin() as conn:
            return conn.execute(self.table.delete().where(
                self.table.c.job_id == job_id)).rowcount == 1

    # -- reads -----------------------------------------------------------------------------
    def _read(self, statement: Any) -> list[Any]:
        with self._engines.get().connect() as conn:
            return conn.execute(statement).all()

    def get(self, job_id: str) -> JobResult | None:
        t = self.table
        rows = self._read(sa.select(t.c.data).where(t.c.job_id == job_id, self._live()))
        return JobResult.from_dict(loads(rows[0][0])) if rows else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        ids, t, found = list(dict.fromkeys(job_ids)), self.table, {}
        for start in range(0, len(ids), 1000):
            for (data,) in self._read(sa.select(t.c.data).where(
                    t.c.job_id.in_(ids[start:start + 1000]), self._live())):
                job = JobResult.from_dict(loads(data))
                found[job.job_id] = job
        return found

    def get_status(self, job_id: str) -> str | None:
        t = self.table
        rows = self._read(sa.select(t.c.status).where(t.c.job_id == job_id, self._live()))
        return rows[0][0] if rows else None

    def history(self, job_id: str) -> list[Transition]:
        return job_history(self, job_id)

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        t = self.table
        query = sa.select(t.c.data).where(self._live())
        for column, value in ((t.c.run_id, run_id), (t.c.status, status), (t.c.queue, queue)):
            if value is not None:
                query = query.where(column == value)
        rows = self._read(query.order_by(t.c.created_at.desc(), t.c.job_id.desc()).limit(limit))
        return [JobResult.from_dict(loads(data)) for (data,) in rows]

    def cleanup_expired(self) -> int:
        with self._engines.get().begin() as conn:
            return conn.execute(self.table.delete().where(
                self.table.c.expires_at <= time.time())).rowcount

    def stats(self) -> dict[str, Any]:
        t = self.table
        return summarise(self._read(sa.select(t.c.status, t.c.queue, t.c.duration)
                                    .where(self._live())), store=self.kind)

    def drop(self) -> None:
        """Remove the table (tests, and a store given up for good)."""
        self.table.drop(self._engines.get(), checkfirst=True)

    def close(self) -> None:
        self._engines.close()
