"""What differs between the databases SqlSink writes to: the column types of the kinds
(etl.sinks.sql_values), how a batch reaches the table, the merge statement, and which
errors a retry can mend. MariaDB/MySQL have a module of their own, etl.sinks.sql_mysql.

How a batch is loaded, fastest first (bench/bench_sql_sink.py measures them):

* PostgreSQL: COPY of a CSV that pyarrow writes, straight into the table ("append",
  "replace") or into a temporary staging table that one INSERT ... ON CONFLICT DO UPDATE
  merges ("merge"). COPY through psycopg's write_row took about twice as long, and
  streaming the CSV in chunks gained nothing measurable.
* MariaDB/MySQL: see etl.sinks.sql_mysql (a staging table, then INSERT ... SELECT).
* SQLite: executemany of INSERT ... ON CONFLICT DO UPDATE (SQLite 3.24 or later).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import pyarrow as pa

from etl.core.errors import ConfigError
from etl.core.urls import mask_url
from etl.sinks.sql_values import csv_bytes, without_zone

STAGE = "_etl_stage"  # the staging table: temporary, so private to its connection


class Refused(Exception):
    """The database refused the batch's values (a permanent failure, like a DataError)."""


class Dialect:
    """SQL for one database: what the three share, with PostgreSQL's types."""

    quote_char, placeholder = '"', "%s"
    seq_type = "CHAR(40)"  # 40 digits: text order is sequence order
    ledger_text = "TEXT"
    ledger_stamp = "TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP"
    table_options = ""
    types = {"integer": "BIGINT", "float": "DOUBLE PRECISION", "boolean": "BOOLEAN",
             "timestamptz": "TIMESTAMP WITH TIME ZONE", "timestamp": "TIMESTAMP", "date": "DATE",
             "text": "TEXT", "null": "TEXT"}

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def quote(self, name: str) -> str:
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def target(self, table: str, schema: str | None) -> str:
        return f"{self.quote(schema)}.{self.quote(table)}" if schema else self.quote(table)

    def params(self, sql: str) -> str:
        """`sql` made ready for parameters: '%' doubled for a driver with %s placeholders."""
        return sql.replace("%", "%%") if self.placeholder == "%s" else sql

    def column_type(self, kind: str, *, key: bool) -> str:
        return self.types[kind]

    # -- definitions ---------------------------------------------------------------------
    def create_table(self, target: str, kinds: dict[str, str], key: Sequence[str], seq: str) -> str:
        """The table of a batch's columns, the sequence column last; the key as primary key."""
        defs = [f"{self.quote(name)} {self.column_type(kind, key=name in key)}"
                + (" NOT NULL" if name in key else "")
                for name, kind in kinds.items() if name != seq]
        defs.append(f"{self.quote(seq)} {self.seq_type} NOT NULL")
        if key:
            defs.append(f"PRIMARY KEY ({', '.join(map(self.quote, key))})")
        return f"CREATE TABLE IF NOT EXISTS {target} ({', '.join(defs)}){self.table_options}"

    def add_column(self, target: str, name: str, kind: str, seq: str) -> str:
        kind_sql = self.seq_type if name == seq else self.column_type(kind, key=False)
        return f"ALTER TABLE {target} ADD COLUMN {self.quote(name)} {kind_sql}"

    def create_ledger(self, ledger: str) -> str:
        t = self.ledger_text
        return (f"CREATE TABLE IF NOT EXISTS {ledger} (sink_table {t} NOT NULL, "
                f"run_id {t} NOT NULL, shard INTEGER NOT NULL, batch INTEGER NOT NULL, "
                f"{self.quote('rows')} BIGINT NOT NULL, loaded_at {self.ledger_stamp}, "
                f"PRIMARY KEY (sink_table, run_id, shard, batch)){self.table_options}")

    def table_kind(self, column: dict[str, Any]) -> str:
        """The kind of a reflected column (SQLAlchemy inspector's get_columns entry)."""
        import sqlalchemy as sa

        t = column["type"]
        if isinstance(t, sa.Boolean) or (type(t).__name__ == "TINYINT"
                                         and getattr(t, "display_width", None) == 1):
            return "boolean"
        if isinstance(t, sa.DateTime):
            return "timestamptz" if self.zoned(column) else "timestamp"
        kinds = ((sa.Integer, "integer"), ((sa.Float, sa.Numeric), "float"), (sa.Date, "date"))
        return next((kind for base, kind in kinds if isinstance(t, base)), "text")

    def zoned(self, column: dict[str, Any]) -> bool:
        return bool(getattr(column["type"], "timezone", False))

    # -- loading and errors: one subclass per database ----------------------------------
    def load(self, cursor: Any, target: str, bare: str, data: pa.Table, *, key: Sequence[str],
             update: Sequence[str], seq: str) -> None:
        """Load `data` into `target` (merge: upsert on `key`, the greater `seq` wins, setting
        `update` and `seq`), in the caller's transaction."""
        raise NotImplementedError

    def classify(self, exc: BaseException) -> str:
        """"retry" (deadlock: run the transaction again), "unique" (a unique violation),
        "permanent" (the batch or table is wrong: BatchError) or "transient" (the server
        is gone or busy: let it propagate, the framework retries the message)."""
        raise NotImplementedError

    def message(self, exc: BaseException, table: str) -> str:
        """The database's complaint as one line, naming `table` rather than the staging table."""
        orig = getattr(exc, "orig", None) or exc
        return mask_url(str(orig).splitlines()[0].replace(STAGE, table))


class Postgres(Dialect):
    """PostgreSQL through psycopg 3: COPY, and INSERT ... ON CONFLICT for a merge."""

    seq_type = 'CHAR(40) COLLATE "C"'  # byte order, whatever the database's collation

    def load(self, cursor: Any, target: str, bare: str, data: pa.Table, *, key: Sequence[str],
             update: Sequence[str], seq: str) -> None:
        """COPY the CSV into the table, or (merge) into a staging table that one
        INSERT ... ON CONFLICT merges, in key order (concurrent merges lock rows in one order,
        so they wait for each other instead of deadlocking)."""
        cols = ", ".join(map(self.quote, data.column_names))
        if not key:
            return self._copy(cursor, target, cols, data)
        cursor.execute(f"CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {cols} FROM {target} "
                       "WITH NO DATA")
        self._copy(cursor, STAGE, cols, data)
        keys, s = ", ".join(map(self.quote, key)), self.quote(seq)
        sets = ", ".join(f"{q} = EXCLUDED.{q}" for q in map(self.quote, [*update, seq]))
        cursor.execute(f"INSERT INTO {target} AS _etl_t ({cols}) SELECT {cols} FROM {STAGE} "
                       f"ORDER BY {keys} ON CONFLICT ({keys}) DO UPDATE SET {sets} "
                       f"WHERE COALESCE(_etl_t.{s}, '') < EXCLUDED.{s}")

    def _copy(self, cursor: Any, into: str, cols: str, data: pa.Table) -> None:
        with cursor.copy(f"COPY {into} ({cols}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(memoryview(csv_bytes(data)))

    def classify(self, exc: BaseException) -> str:
        import psycopg

        orig = getattr(exc, "orig", None) or exc
        if not isinstance(orig, psycopg.Error):
            return "transient"
        state = orig.sqlstate or ""
        if state in ("40P01", "40001"):
            return "retry"
        if state == "23505":
            return "unique"
        if not state or state[:2] in ("08", "40", "53", "55", "57", "58", "XX"):
            return "transient"
        return "permanent"

    def message(self, exc: BaseException, table: str) -> str:
        orig = getattr(exc, "orig", None) or exc
        diag = getattr(orig, "diag", None)
        text = (getattr(diag, "message_primary", None) or str(orig)).splitlines()[0]
        column = getattr(diag, "column_name", None) or next(
            iter(re.findall(r"column (\S+?):", getattr(diag, "context", None) or "")), None)
        if column and f'column "{column}"' not in text:
            text = f"column {column}: {text}"
        return mask_url(text.replace(STAGE, table))


class SQLite(Dialect):
    """SQLite 3.24+: executemany of an upsert; times as ISO text (TIMESTAMP: UTC)."""

    placeholder, ledger_stamp = "?", "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP"
    types = {**Dialect.types, "timestamptz": "TIMESTAMP", "timestamp": "DATETIME"}

    def zoned(self, column: dict[str, Any]) -> bool:
        return type(column["type"]).__name__ == "TIMESTAMP"

    def load(self, cursor: Any, target: str, bare: str, data: pa.Table, *, key: Sequence[str],
             update: Sequence[str], seq: str) -> None:
        names = data.column_names
        statement = (f"INSERT INTO {target} ({', '.join(map(self.quote, names))}) "
                     f"VALUES ({', '.join('?' * len(names))})")
        if key:
            s = self.quote(seq)
            sets = ", ".join(f"{q} = excluded.{q}" for q in map(self.quote, [*update, seq]))
            statement += (f" ON CONFLICT ({', '.join(map(self.quote, key))}) DO UPDATE SET {sets} "
                          f"WHERE COALESCE({bare}.{s}, '') < excluded.{s}")
        columns = []
        for column in without_zone(data).columns:  # times as ISO text: SQLite has no time type
            values = column.to_pylist()
            if pa.types.is_timestamp(column.type):
                values = [v if v is None else v.isoformat(" ", "microseconds") for v in values]
            elif pa.types.is_date(column.type):
                values = [v if v is None else v.isoformat() for v in values]
            columns.append(values)
        cursor.executemany(statement, list(zip(*columns)))

    def classify(self, exc: BaseException) -> str:
        import sqlite3

        orig = getattr(exc, "orig", None) or exc
        if not isinstance(orig, sqlite3.Error):
            return "transient"
        text = str(orig).lower()
        if isinstance(orig, sqlite3.IntegrityError) and "unique" in text:
            return "unique"
        if "locked" in text or "busy" in text:
            return "retry"
        if "disk" in text or "unable to open" in text:
            return "transient"
        return "permanent"


def dialect_for(engine: Any) -> Dialect:
    """The dialect of `engine`'s database."""
    name = engine.dialect.name
    if name == "postgresql":
        return Postgres(engine)
    if name in ("mysql", "mariadb"):
        from etl.sinks.sql_mysql import MySQL

        return MySQL(engine)
    if name == "sqlite":
        return SQLite(engine)
    raise ConfigError(f"SqlSink cannot write to {name} databases")


__all__ = ["Dialect", "Postgres", "Refused", "SQLite", "STAGE", "dialect_for"]
