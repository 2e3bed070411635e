"""SQLite state store: the embedded default, safe across threads and processes.

WAL journal so readers never block the writer, a 30 s busy timeout so concurrent writers
wait instead of failing, synchronous=NORMAL (durable at each WAL checkpoint, fast), one
connection per thread and per process (a forked child opens its own), and every change in a
`BEGIN IMMEDIATE` transaction, so record_fetch and complete_stage are atomic here.

complete_stage keeps the same guard as the MongoDB store: each checkpoint row carries the
JSON list of batches already counted per stage (`clean_done`, `load_done`), so counting is
exactly once whatever the dedup ledger holds, and both stores answer the same way.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator

from etl.stores.state.base import (
    BATCH_COUNTERS, ROW_COUNTERS, Checkpoint, ErrorRecord, Fence, Lease, RawPayload, RunRecord,
    masked_error, utcnow,
)
from etl.core.errors import LeaseLost
from etl.core.names import task_fingerprint
from etl.core.statuses import RunStatus, ShardStatus
from etl.stores.state.codec import dumps, from_ms, loads, to_ms
from etl.core.sqlite_db import Connections, open_path, write
from etl.core.urls import mask_url

log = logging.getLogger(__name__)


SCHEMA = """
CREATE TABLE IF NOT EXISTS EtlRun (
    run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, plan TEXT NOT NULL, shards INTEGER NOT NULL,
    status TEXT NOT NULL, params TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS EtlRun_pipeline ON EtlRun (pipeline, plan, created_at);
CREATE TABLE IF NOT EXISTS TaskCheckpoint (
    run_id TEXT NOT NULL, shard INTEGER NOT NULL, cursor TEXT, status TEXT NOT NULL,
    fetch_done INTEGER NOT NULL DEFAULT 0,
    batches_fetched INTEGER NOT NULL DEFAULT 0, batches_cleaned INTEGER NOT NULL DEFAULT 0,
    batches_loaded INTEGER NOT NULL DEFAULT 0, rows_fetched INTEGER NOT NULL DEFAULT 0,
    rows_cleaned INTEGER NOT NULL DEFAULT 0, rows_quarantined INTEGER NOT NULL DEFAULT 0,
    rows_loaded INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL, last_error TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS TaskCheckpoint_run_shard ON TaskCheckpoint (run_id, shard);
CREATE TABLE IF NOT EXISTS TaskDedup (
    task_fingerprint TEXT NOT NULL, stage TEXT NOT NULL, run_id TEXT, done_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS TaskDedup_fingerprint ON TaskDedup (task_fingerprint);
CREATE INDEX IF NOT EXISTS TaskDedup_run ON TaskDedup (run_id);
CREATE TABLE IF NOT EXISTS PendingTasks (
    task_key TEXT NOT NULL, taken_by TEXT, lease_until INTEGER, heartbeat INTEGER,
    retry_count INTEGER NOT NULL DEFAULT 0, payload_ref TEXT, token INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS PendingTasks_task_key ON PendingTasks (task_key);
CREATE INDEX IF NOT EXISTS PendingTasks_lease_until ON PendingTasks (lease_until);
CREATE TABLE IF NOT EXISTS TaskErrorLog (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, shard INTEGER, batch INTEGER,
    stage TEXT NOT NULL, error_type TEXT NOT NULL, message TEXT NOT NULL, traceback TEXT,
    context TEXT, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS TaskErrorLog_run_at ON TaskErrorLog (run_id, at);
CREATE TABLE IF NOT EXISTS RawPayload (
    run_id TEXT NOT NULL, shard INTEGER NOT NULL, batch INTEGER NOT NULL, key TEXT NOT NULL,
    bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, rows INTEGER NOT NULL, cursor_start TEXT,
    cursor_end TEXT, created_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS RawPayload_run_shard_batch ON RawPayload (run_id, shard, batch);
CREATE TABLE IF NOT EXISTS QuarantinedRows (
    run_id TEXT NOT NULL, shard INTEGER NOT NULL, batch INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, shard, batch))
"""

#: Columns added after the first release, created on open when a file lacks them.
_ADDED_COLUMNS = {"TaskCheckpoint": {f"{stage}_done": "TEXT NOT NULL DEFAULT '[]'"
                                     for stage in BATCH_COUNTERS}}

_CHECKPOINT_COLUMNS = ("run_id", "shard", "cursor", "status", "fetch_done", "batches_fetched",
                       "batches_cleaned", "batches_loaded", "rows_fetched", "rows_cleaned",
                       "rows_quarantined", "rows_loaded", "updated_at", "last_error")

#: Status after any progress: "done" once complete, "running" once started, else unchanged.
_SETTLE_STATUS = (
    "UPDATE TaskCheckpoint SET status = CASE "
    f"WHEN fetch_done = 1 AND batches_loaded >= batches_fetched THEN '{ShardStatus.DONE}' "
    f"WHEN status = '{ShardStatus.PENDING}' THEN '{ShardStatus.RUNNING}' ELSE status END "
    "WHERE run_id = ? AND shard = ?")
#: A lease given up by its holder (task_key, owner, token): free for the next taker.
_RELEASE = ("UPDATE PendingTasks SET taken_by = NULL, lease_until = NULL WHERE task_key = ? "
            "AND taken_by = ? AND token = ?")


class SQLiteStateStore:
    """StateStore on one SQLite file (or `:memory:`, for one process)."""

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self.path = open_path(url)
        self._db = Connections(self.path)
        self._create_schema()
        log.debug("state store opened: %s", self.url)

    def _create_schema(self) -> None:
        with self._write() as conn:
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                for name, spec in columns.items():
                    if name not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {spec}")

    # -- plumbing ------------------------------------------------------------------------
    def _write(self) -> ContextManager[sqlite3.Connection]:
        return write(self._db)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._db.use() as conn:
            row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._db.use() as conn:
            return conn.execute(sql, args).fetchall()

    def close(self) -> None:
        self._db.close()

    # -- runs ----------------------------------------------------------------------------
    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(run_id=row["run_id"], pipeline=row["pipeline"], plan=row["plan"],
                         shards=row["shards"], status=row["status"], params=loads(row["params"]),
                         created_at=from_ms(row["created_at"]), updated_at=from_ms(row["updated_at"]))

    def create_run(self, run: RunRecord) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO EtlRun VALUES (?,?,?,?,?,?,?,?)",
                (run.run_id, run.pipeline, run.plan, run.shards, run.status, dumps(run.params),
                 to_ms(run.created_at), to_ms(run.updated_at)))
            return cur.rowcount == 1

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._one("SELECT * FROM EtlRun WHERE run_id = ?", (run_id,))
        return self._run(row) if row else None

    def latest_run(self, pipeline: str, plan: str, *, unfinished: bool = True) -> RunRecord | None:
        extra = f" AND status IN ('{RunStatus.RUNNING}', '{RunStatus.FAILED}')" if unfinished else ""
        row = self._one(f"SELECT * FROM EtlRun WHERE pipeline = ? AND plan = ?{extra} "
                        "ORDER BY created_at DESC, rowid DESC LIMIT 1", (pipeline, plan))
        return self._run(row) if row else None

    def list_runs(self, *, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        where, args = ("WHERE pipeline = ?", (pipeline,)) if pipeline is not None else ("", ())
        rows = self._all(f"SELECT * FROM EtlRun {where} ORDER BY created_at DESC, rowid DESC "
                         "LIMIT ?", (*args, limit))
        return [self._run(r) for r in rows]

    def set_run_status(self, run_id: str, status: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE EtlRun SET status = ?, updated_at = ? WHERE run_id = ?",
                         (status, to_ms(utcnow()), run_id))

    # -- checkpoints ---------------------------------------------------------------------
    @staticmethod
    def _checkpoint(row: sqlite3.Row) -> Checkpoint:
        values = {c: row[c] for c in _CHECKPOINT_COLUMNS}
        values.update(cursor=loads(row["cursor"]), fetch_done=bool(row["fetch_done"]),
                      updated_at=from_ms(row["updated_at"]))
        return Checkpoint(**values)

    def init_checkpoints(self, run_id: str, shards: int) -> None:
        now = to_ms(utcnow())
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO TaskCheckpoint (run_id, shard, cursor, status, updated_at) "
                f"VALUES (?, ?, 'null', '{ShardStatus.PENDING}', ?)",
                [(run_id, s, now) for s in range(shards)])

    def get_checkpoint(self, run_id: str, shard: int) -> Checkpoint | None:
        row = self._one("SELECT * FROM TaskCheckpoint WHERE run_id = ? AND shard = ?", (run_id, shard))
        return self._checkpoint(row) if row else None

    def list_checkpoints(self, run_id: str | None = None) -> list[Checkpoint]:
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        rows = self._all(f"SELECT * FROM TaskCheckpoint {where} ORDER BY run_id, shard", args)
        return [self._checkpoint(r) for r in rows]

    @staticmethod
    def _check_fence(conn: sqlite3.Connection, fence: Fence | None) -> None:
        """Inside the write transaction, so the check and the write are one atomic step."""
        if fence is None:
            return
        row = conn.execute("SELECT 1 FROM PendingTasks WHERE task_key = ? AND taken_by = ? "
                           "AND token = ? AND lease_until > ?",
                           (fence.task_key, fence.owner, fence.token, to_ms(utcnow()))).fetchone()
        if row is None:
            raise LeaseLost(f"lease {fence.task_key} is no longer held by {fence.owner} "
                            f"(token {fence.token}): not committing")

    @contextmanager
    def _commit(self, fence: Fence | None, release: bool) -> Iterator[sqlite3.Connection]:
        """A write transaction that commits a task's effect: fenced when given a `fence`,
        and with `release`, ending the fence's lease in the same transaction (one write
        instead of two: the lease dies with the effect it guarded, or neither happens)."""
        with self._write() as conn:
            self._check_fence(conn, fence)
            yield conn
            if fence is not None and release:
                conn.execute(_RELEASE, (fence.task_key, fence.owner, fence.token))
        if fence is not None and release:
            fence.released = True

    def record_fetch(self, payload: RawPayload, *, exhausted: bool,
                     fence: Fence | None = None, release: bool = False,
                     ledger: bool = False) -> bool:
        p = payload
        with self._commit(fence, release) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO RawPayload VALUES (?,?,?,?,?,?,?,?,?,?)",
                (p.run_id, p.shard, p.batch, p.key, int(p.bytes), p.sha256, int(p.rows),
                 dumps(p.cursor_start), dumps(p.cursor_end), to_ms(p.created_at)))
            if ledger:
                conn.execute("INSERT OR IGNORE INTO TaskDedup VALUES (?,?,?,?)",
                             (task_fingerprint("fetch", p.run_id, p.shard, p.batch), "fetch",
                              p.run_id, to_ms(utcnow())))
            cur = conn.execute(
                "UPDATE TaskCheckpoint SET cursor = ?, batches_fetched = ?, "
                "rows_fetched = rows_fetched + ?, fetch_done = ?, updated_at = ? "
                "WHERE run_id = ? AND shard = ? AND batches_fetched = ?",
                (dumps(p.cursor_end), p.batch + 1, int(p.rows), int(exhausted), to_ms(utcnow()),
                 p.run_id, p.shard, p.batch))
            advanced = cur.rowcount == 1
            if advanced:
                conn.execute(_SETTLE_STATUS, (p.run_id, p.shard))
        return advanced

    def finish_fetch(self, run_id: str, shard: int, batches: int, *,
                     fence: Fence | None = None, release: bool = False) -> bool:
        with self._commit(fence, release) as conn:
            cur = conn.execute(
                "UPDATE TaskCheckpoint SET fetch_done = 1, updated_at = ? "
                "WHERE run_id = ? AND shard = ? AND batches_fetched = ? AND fetch_done = 0",
                (to_ms(utcnow()), run_id, shard, batches))
            conn.execute(_SETTLE_STATUS, (run_id, shard))
            changed = cur.rowcount == 1
        return changed

    def complete_stage(self, run_id: str, shard: int, batch: int, stage: str,
                       rows: dict[str, int], *, fence: Fence | None = None,
                       release: bool = False, quarantine: bytes | None = None) -> bool:
        counts = stage_counts(stage, rows)
        done = f"{stage}_done"
        sets = ", ".join(f"{name} = {name} + ?" for name in counts)
        with self._commit(fence, release) as conn:
            if quarantine is not None:  # the same rows whichever attempt wrote them
                conn.execute("INSERT OR REPLACE INTO QuarantinedRows VALUES (?,?,?,?)",
                             (run_id, shard, batch, quarantine))
            cur = conn.execute(
                f"UPDATE TaskCheckpoint SET {sets}, {done} = json_insert({done}, '$[#]', ?), "
                "updated_at = ? WHERE run_id = ? AND shard = ? "
                f"AND NOT EXISTS (SELECT 1 FROM json_each({done}) WHERE value = ?)",
                (*counts.values(), batch, to_ms(utcnow()), run_id, shard, batch))
            conn.execute(_SETTLE_STATUS, (run_id, shard))
            conn.execute("INSERT OR IGNORE INTO TaskDedup VALUES (?,?,?,?)",
                         (task_fingerprint(stage, run_id, shard, batch), stage, run_id,
                          to_ms(utcnow())))
            counted = cur.rowcount == 1
        return counted

    def set_shard_status(self, run_id: str, shard: int, status: str,
                         last_error: str | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE TaskCheckpoint SET status = ?, last_error = COALESCE(?, last_error), "
                "updated_at = ? WHERE run_id = ? AND shard = ?",
                (status, mask_url(last_error) if last_error else last_error, to_ms(utcnow()),
                 run_id, shard))

    # -- dedup ledger --------------------------------------------------------------------
    def is_done(self, fingerprint: str) -> bool:
        return self._one("SELECT 1 FROM TaskDedup WHERE task_fingerprint = ?", (fingerprint,)) is not None

    def mark_done(self, fingerprint: str, stage: str, run_id: str | None = None) -> bool:
        with self._write() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO TaskDedup VALUES (?,?,?,?)",
                               (fingerprint, stage, run_id, to_ms(utcnow())))
            return cur.rowcount == 1

    def count_done(self, run_id: str | None = None) -> int:
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        row = self._one(f"SELECT COUNT(*) FROM TaskDedup {where}", args)
        return int(row[0]) if row else 0

    # -- raw payload pointers ------------------------------------------------------------
    @staticmethod
    def _payload(row: sqlite3.Row) -> RawPayload:
        return RawPayload(run_id=row["run_id"], shard=row["shard"], batch=row["batch"],
                          key=row["key"], bytes=row["bytes"], sha256=row["sha256"], rows=row["rows"],
                          cursor_start=loads(row["cursor_start"]), cursor_end=loads(row["cursor_end"]),
                          created_at=from_ms(row["created_at"]))

    def get_payload(self, run_id: str, shard: int, batch: int) -> RawPayload | None:
        row = self._one("SELECT * FROM RawPayload WHERE run_id = ? AND shard = ? AND batch = ?",
                        (run_id, shard, batch))
        return self._payload(row) if row else None

    def list_payloads(self, run_id: str, shard: int | None = None) -> list[RawPayload]:
        where, args = ("AND shard = ?", (shard,)) if shard is not None else ("", ())
        rows = self._all(f"SELECT * FROM RawPayload WHERE run_id = ? {where} ORDER BY shard, batch",
                         (run_id, *args))
        return [self._payload(r) for r in rows]

    # -- quarantined rows kept with their clean -----------------------------------------
    def get_quarantine(self, run_id: str, shard: int, batch: int) -> bytes | None:
        row = self._one("SELECT data FROM QuarantinedRows WHERE run_id = ? AND shard = ? "
                        "AND batch = ?", (run_id, shard, batch))
        return bytes(row["data"]) if row else None

    # -- errors --------------------------------------------------------------------------
    def log_error(self, error: ErrorRecord) -> None:
        e = masked_error(error)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO TaskErrorLog (run_id, shard, batch, stage, error_type, message, "
                "traceback, context, at) VALUES (?,?,?,?,?,?,?,?,?)",
                (e.run_id, e.shard, e.batch, e.stage, e.error_type, e.message, e.traceback,
                 dumps(e.context), to_ms(e.at)))

    def list_errors(self, run_id: str | None = None, *, limit: int = 100) -> list[ErrorRecord]:
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        rows = self._all(f"SELECT * FROM TaskErrorLog {where} ORDER BY at DESC, id DESC LIMIT ?",
                         (*args, limit))
        return [ErrorRecord(run_id=r["run_id"], stage=r["stage"], error_type=r["error_type"],
                            message=r["message"], shard=r["shard"], batch=r["batch"],
                            traceback=r["traceback"] or "", context=loads(r["context"]) or {},
                            at=from_ms(r["at"])) for r in rows]

    # -- leases --------------------------------------------------------------------------
    @staticmethod
    def _lease(row: sqlite3.Row) -> Lease:
        return Lease(task_key=row["task_key"], taken_by=row["taken_by"],
                     lease_until=from_ms(row["lease_until"]), heartbeat=from_ms(row["heartbeat"]),
                     retry_count=row["retry_count"], payload_ref=row["payload_ref"], token=row["token"])

    def acquire_lease(self, task_key: str, owner: str, ttl: float,
                      payload_ref: str | None = None, *,
                      take_from: str | None = None) -> Lease | None:
        now = to_ms(utcnow())
        until = now + int(ttl * 1000)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM PendingTasks WHERE task_key = ?", (task_key,)).fetchone()
            live = row is not None and row["taken_by"] is not None and (row["lease_until"] or 0) > now
            if row is None:  # a new task (most are): the lease is what was inserted
                conn.execute("INSERT INTO PendingTasks VALUES (?,?,?,?,0,?,1)",
                             (task_key, owner, until, now, payload_ref))
                return Lease(task_key=task_key, taken_by=owner, lease_until=from_ms(until),
                             heartbeat=from_ms(now), retry_count=0, payload_ref=payload_ref,
                             token=1)
            elif live and row["taken_by"] == owner:  # ours: extend, same token
                conn.execute("UPDATE PendingTasks SET lease_until = ?, heartbeat = ?, "
                             "payload_ref = COALESCE(?, payload_ref) WHERE task_key = ?",
                             (until, now, payload_ref, task_key))
            elif live and row["taken_by"] != take_from:
                return None
            else:  # free, expired or its holder dead (a takeover, counted as a retry)
                conn.execute(
                    "UPDATE PendingTasks SET taken_by = ?, lease_until = ?, heartbeat = ?, "
                    "token = token + 1, retry_count = retry_count + ?, "
                    "payload_ref = COALESCE(?, payload_ref) WHERE task_key = ?",
                    (owner, until, now, int(row["taken_by"] is not None), payload_ref, task_key))
            found = conn.execute("SELECT * FROM PendingTasks WHERE task_key = ?", (task_key,)).fetchone()
            return self._lease(found)

    def renew_lease(self, task_key: str, owner: str, token: int, ttl: float) -> bool:
        now = to_ms(utcnow())
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE PendingTasks SET lease_until = ?, heartbeat = ? WHERE task_key = ? AND "
                "taken_by = ? AND token = ? AND lease_until > ?",
                (now + int(ttl * 1000), now, task_key, owner, token, now))
            return cur.rowcount == 1

    def release_lease(self, task_key: str, owner: str, token: int) -> bool:
        with self._write() as conn:
            return conn.execute(_RELEASE, (task_key, owner, token)).rowcount == 1

    def get_lease(self, task_key: str) -> Lease | None:
        row = self._one("SELECT * FROM PendingTasks WHERE task_key = ?", (task_key,))
        return self._lease(row) if row else None


def stage_counts(stage: str, rows: dict[str, int]) -> dict[str, int]:
    """The counters complete_stage adds to: the stage's batch counter plus its row counters.
    An unknown stage or row counter is a bug in the caller, refused before any write."""
    allowed = ROW_COUNTERS.get(stage)
    if allowed is None or stage not in BATCH_COUNTERS or set(rows) - set(allowed):
        raise ValueError(f"complete_stage: stage {stage!r} counts only {allowed}, got {sorted(rows)}")
    return {BATCH_COUNTERS[stage]: 1, **{name: int(value) for name, value in rows.items()}}
