"""A database table as a sink, on PostgreSQL, MariaDB/MySQL or SQLite: each batch loaded
exactly once by one transaction, rows merged by the pipeline's key.

    SqlSink("postgresql://etl@db/shop", table="orders")   # merge on the pipeline's key

Exactly once: a batch's transaction looks the batch up in the ledger table (`etl_loads`:
sink_table, run_id, shard, batch, rows, loaded_at), loads the rows, inserts the batch's
ledger row and commits the three together. A batch the ledger has is not loaded again; a
crash before the commit leaves neither rows nor ledger row; of two processes loading one
batch at once, one collides with the other's ledger row (its primary key) and rolls back.

The table is made from the first batch when missing (the key as primary key for "merge"),
holds the column `_etl_seq` (SEQ_COLUMN, each row's sequence) and gains any column a later
batch brings (the pipeline's drift policy decided the batch may load). A merge keeps, per
key, the row with the greatest sequence, so the table is what pandas'
`drop_duplicates(key, keep="last")` gives over every input, however the batches arrive.
etl.sinks.sql_table holds the table's definition and ledger, etl.sinks.sql_dialects how
each database loads, etl.sinks.sql_values how values travel.
"""

from __future__ import annotations

import copy
import logging
import random
import re
import time
from pathlib import Path
from typing import Any, Sequence

from etl.core.errors import BatchError
from etl.core.faults import crash_point
from etl.core.urls import mask_url, parse_url, scheme_of
from etl.sinks.base import (SEQ_COLUMN, SEQ_LENGTH, BackfillAware, Reachable, Sequenced, Sink,
                            check_disposition)
from etl.sinks.sql_table import SqlTable

log = logging.getLogger(__name__)

#: Times a transaction that lost a deadlock is run again before the error propagates.
DEADLOCK_TRIES = 6
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class DatabaseUnavailable(ConnectionError):
    """The sink's database refused or dropped the connection: transient (not an EtlError),
    so the batch is retried."""


def _connection_failed(exc: BaseException) -> bool:
    """Whether `exc` is SQLAlchemy's word for a connection that could not be made or was
    lost (not a deadlock or a refused row, which the transaction loop sorts out)."""
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:
        return False
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    text = str(getattr(exc, "orig", exc)).lower()
    return bool(exc.connection_invalidated) or any(
        hint in text for hint in ("connection refused", "could not connect", "can't connect",
                                  "connection failed", "server has gone away",
                                  "lost connection", "server closed the connection"))


class _AlreadyLoaded(Exception):
    """The ledger's primary key refused the batch's row: another process loaded it."""


class SqlSink(Sink, BackfillAware, Sequenced, Reachable):
    """A table at `url` (`postgresql://`, `mysql://`, `mariadb://`, `sqlite:///path`),
    loaded by batch transactions: "merge" (default) upserts on `key`, "append" adds every
    row, "replace" adds them and drops older runs' rows once the run is finished."""

    def __init__(self, url: str, *, table: str, key: Sequence[str] | None = None,
                 write_disposition: str = "merge", schema: str | None = None,
                 ledger_table: str = "etl_loads") -> None:
        self.key = check_disposition("SqlSink", write_disposition, key)
        if not table or not isinstance(table, str):
            raise ValueError(f"SqlSink: table must be a non-empty name, not {table!r}")
        if not _NAME.match(ledger_table):
            raise ValueError(f"SqlSink: ledger_table must be a plain name, not {ledger_table!r}")
        self.url, self.table_name, self.schema, self.ledger_table = url, table, schema, ledger_table
        self.write_disposition = write_disposition
        self._table = SqlTable(url, table=table, schema=schema, ledger=ledger_table)

    def __repr__(self) -> str:
        return (f"SqlSink({mask_url(self._table.url)!r}, table={self._table.qualified!r}, "
                f"key={list(self.key)!r}, write_disposition={self.write_disposition!r})")

    def describe(self) -> str:
        on = f" on {', '.join(self.key)}" if self.key and self.write_disposition == "merge" else ""
        return (f"sql table {self._table.qualified} at {mask_url(self._table.url)} "
                f"({self.write_disposition}{on})")

    def with_key(self, key: Sequence[str]) -> "SqlSink":
        """The same table bound to `key` (a merge upserts on it)."""
        bound = copy.copy(self)
        bound.key = check_disposition("SqlSink", self.write_disposition, key)
        return bound

    def for_backfill(self) -> "SqlSink":
        """"replace" appends instead (other runs' rows are kept); "merge" and "append" are
        already what a backfill needs."""
        if self.write_disposition != "replace":
            return self
        appending = copy.copy(self)
        appending.write_disposition = "append"
        return appending

    def reach(self) -> str:
        """The database answers `SELECT 1` with the URL's credentials, on a connection of its
        own (closed after, so none crosses a fork); a SQLite file is only checked to be
        writable, as connecting would make it. Nothing is written."""
        from etl.sinks.reach import PROBE_TIMEOUT_S, writable_file
        from etl.sinks.sql_table import open_engine

        if scheme_of(self.url).startswith("sqlite"):
            database = parse_url(self.url).path
            if database in ("", ":memory:"):
                return "an in-memory database"
            return writable_file(Path(database))
        engine = open_engine(self.url, connect_timeout=PROBE_TIMEOUT_S)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
        return "the database answers"

    def close(self) -> None:
        """Close this process's connections (opened again when the sink is next used)."""
        self._table.close()

    # -- loading -------------------------------------------------------------------------
    def write_batch(self, frame: Any, *, run_id: str, shard: int, batch: int) -> int:
        """Load the batch in one transaction with its ledger row; the batch's row count
        (the recorded one when the ledger already had the batch). A database that does not
        answer is DatabaseUnavailable: one line, retried like any transient failure."""
        try:
            return self._write(frame, run_id=run_id, shard=shard, batch=batch)
        except Exception as exc:  # noqa: BLE001 - only a failed connection is reworded
            if not _connection_failed(exc):
                raise
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise DatabaseUnavailable(f"{self.describe()}: run {run_id} shard {shard} batch "
                                      f"{batch}: cannot reach the database: "
                                      f"{mask_url(first)}") from exc

    def _write(self, frame: Any, *, run_id: str, shard: int, batch: int) -> int:
        where = f"{self.describe()}: run {run_id} shard {shard} batch {batch}"
        recorded = self._lookup(run_id, shard, batch, where)
        if recorded is not None:
            return recorded
        data, kinds = self._prepare(frame, where)
        if len(frame):  # an empty batch is only recorded: its dtypes may be pandas' guesses
            data = self._define(data, kinds, where)
        dialect, refreshed = self._table.dialect, False
        for attempt in range(DEADLOCK_TRIES):
            try:
                return self._transaction(data, len(frame), run_id=run_id, shard=shard, batch=batch)
            except _AlreadyLoaded:
                log.info("%s: loaded by another process meanwhile", where)
                recorded = self._table.recorded(run_id, shard, batch)
                return len(frame) if recorded is None else recorded
            except Exception as exc:  # noqa: BLE001 - sorted by the dialect
                verdict = dialect.classify(exc)
                if verdict == "retry" and attempt < DEADLOCK_TRIES - 1:
                    log.info("%s: %s; running the transaction again", where,
                             dialect.message(exc, self._table.qualified))
                    time.sleep(random.uniform(0.01, 0.05) * 2 ** attempt)
                elif verdict in ("permanent", "unique") and not refreshed:
                    refreshed = True  # the table or ledger may have been dropped or altered:
                    self._table.forget()  # look again, once
                    self._table.ensure_ledger(where)
                    data = self._define(data, kinds, where) if len(frame) else data
                elif verdict in ("permanent", "unique"):
                    why = dialect.message(exc, self._table.qualified)
                    raise BatchError(f"{where}: {why}") from None
                else:
                    raise
        raise AssertionError("unreachable")

    def _lookup(self, run_id: str, shard: int, batch: int, where: str) -> int | None:
        """The rows the ledger recorded for the batch (None: not loaded yet), making the
        ledger when it is missing."""
        try:
            self._table.ensure_ledger(where)
            return self._table.recorded(run_id, shard, batch)
        except Exception as exc:  # noqa: BLE001 - the ledger was dropped since: make it again
            if self._table.dialect.classify(exc) != "permanent":
                raise
            self._table.forget()
            self._table.ensure_ledger(where)
            return self._table.recorded(run_id, shard, batch)

    def _define(self, data: Any, kinds: dict[str, str], where: str) -> Any:
        """The table made or widened for the batch, and the batch's values fitted to its
        column kinds (whole floats as integers)."""
        from etl.sinks.sql_values import conform

        key = self.key if self.write_disposition == "merge" else ()
        self._table.ensure(kinds, key=key, where=where)
        try:
            return conform(data, (self._table.known or ({}, ()))[0])
        except ValueError as exc:
            raise BatchError(f"{where}: table {self._table.qualified}: {exc}") from None

    def _prepare(self, frame: Any, where: str) -> tuple[Any, dict[str, str]]:
        """The batch checked (sequence, key) and, for a merge, one row per key (the greatest
        sequence), as a pyarrow table of kinds."""
        from etl.sinks.sql_values import to_arrow

        names = [str(c) for c in frame.columns]
        if len(set(names)) != len(names):
            raise BatchError(f"{where}: the batch has duplicate column names")
        if SEQ_COLUMN not in names:
            raise BatchError(f"{where}: the batch lacks the sequence column {SEQ_COLUMN}")
        seq = frame[SEQ_COLUMN]
        if seq.isna().any() or not (seq.astype(str).str.len() == SEQ_LENGTH).all():
            raise BatchError(f"{where}: {SEQ_COLUMN} must be a {SEQ_LENGTH}-digit text in every "
                             "row")
        if self.write_disposition == "merge" and not self.key:
            raise BatchError(f"{where}: a merge needs a key (SqlSink(key=...) or the pipeline's)")
        missing = [k for k in self.key if k not in names]
        if missing:
            raise BatchError(f"{where}: the batch lacks the key column(s) {', '.join(missing)}")
        if self.write_disposition == "merge":
            nulls = [k for k in self.key if frame[k].isna().any()]
            if nulls:
                raise BatchError(f"{where}: key column(s) {', '.join(nulls)} hold nulls")
            try:
                if frame.duplicated(list(self.key)).any():  # PostgreSQL updates a row once
                    frame = frame.sort_values(SEQ_COLUMN, kind="stable").drop_duplicates(
                        list(self.key), keep="last")  # per statement: keep the newest
            except TypeError as exc:
                raise BatchError(f"{where}: key values cannot be compared: {exc}") from None
        try:
            return to_arrow(frame)
        except ValueError as exc:
            raise BatchError(f"{where}: {exc}") from None

    def _transaction(self, data: Any, rows: int, *, run_id: str, shard: int, batch: int) -> int:
        """Ledger lookup, rows, ledger row: one transaction, committed together."""
        engine, dialect = self._table.open()
        target, bare = self._table.target(), dialect.quote(self._table.name)
        lookup, record = self._table.ledger_sql()
        key = self.key if self.write_disposition == "merge" else ()
        with engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(lookup, (self._table.qualified, run_id, shard, batch))
                found = cursor.fetchall()
                if found:
                    return int(found[0][0])
                if data.num_rows:
                    update: list[str] = []
                    if key:  # every other column of the table, as this transaction sees it
                        cursor.execute(f"SELECT * FROM {target} WHERE 1 = 0")
                        update = [d[0] for d in cursor.description
                                  if d[0] not in key and d[0] != SEQ_COLUMN]
                    dialect.load(cursor, target, bare, data, key=key, update=update, seq=SEQ_COLUMN)
                crash_point("sink.mid_transaction")
                self._before_ledger(conn)
                try:
                    cursor.execute(record, (self._table.qualified, run_id, shard, batch, rows))
                except Exception as exc:  # noqa: BLE001 - a unique violation: lost the race
                    if dialect.classify(exc) == "unique":
                        raise _AlreadyLoaded from None
                    raise
                crash_point("sink.before_commit")
            finally:
                cursor.close()
        log.debug("%s: batch %s/%s/%s loaded %d row(s)", self._table.qualified, run_id, shard,
                  batch, rows)
        return rows

    def _before_ledger(self, connection: Any) -> None:
        """Called in the batch's transaction after the rows are loaded, before the ledger
        row is inserted: nothing here (a test injects a crash)."""

    # -- finishing and reading -------------------------------------------------------------
    def finish_run(self, run_id: str, *, first_seq: str | None = None) -> None:
        """"replace": delete the rows of older runs (sequence below `first_seq`, the smallest
        this run can give); otherwise nothing."""
        if self.write_disposition != "replace":
            return
        if first_seq is None:
            raise ValueError(f"{self.describe()}: finish_run needs first_seq to replace older runs")
        if self._table.reflect() is None:
            return
        dialect = self._table.dialect
        seq = dialect.quote(SEQ_COLUMN)
        self._table.execute(dialect.params(f"DELETE FROM {self._table.target()} WHERE "
                                          f"COALESCE({seq}, '') < ") + dialect.placeholder,
                           (first_seq,))
        log.info("%s: run %s replaced the rows of older runs", self._table.qualified, run_id)

    def read_all(self) -> Any:
        """The table's rows without the sequence column (empty when there is no table)."""
        import pandas as pd

        from etl.sinks.sql_values import to_frame

        known = self._table.reflect()
        if known is None:
            return pd.DataFrame()
        names = [c for c in known[0] if c != SEQ_COLUMN]
        quoted = ", ".join(map(self._table.dialect.quote, names))
        rows = self._table.execute(f"SELECT {quoted} FROM {self._table.target()}")
        return to_frame(names, [known[0][c] for c in names], rows)


__all__ = ["SqlSink"]
