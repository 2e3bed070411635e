"""The database side of a SqlSink: this process's engine, the table's definition (made from
the first batch, widened by later ones) and the ledger table.

Definitions run in transactions of their own, outside any batch's (MySQL commits at every
CREATE or ALTER), and survive a race: when two processes define the same table or column
at once, the loser's error is ignored once the definition is found in place.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from etl.core.errors import BatchError, ConfigError, UnsupportedURL
from etl.core.sql_engines import ProcessEngines
from etl.core.urls import SQL_DRIVERS, mask_url, scheme_of, with_sql_driver
from etl.sinks.base import SEQ_COLUMN
from etl.sinks.sql_dialects import Dialect, dialect_for
from etl.sinks.sql_values import fits

log = logging.getLogger(__name__)

#: Plain schemes and the driver each is spoken through.
DRIVERS = SQL_DRIVERS
SCHEMES = frozenset({*DRIVERS, *DRIVERS.values(), "sqlite", "sqlite+pysqlite"})
INSTALL = "pip install 'dramatiq-etl[sql]'"
_SESSION = {  # UTC sessions (a naive time is UTC); MySQL: strict mode for every table
    "postgresql": "SET TIME ZONE 'UTC'",
    "mysql": "SET SESSION time_zone = '+00:00', SESSION sql_mode = "
             "TRIM(BOTH ',' FROM CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES'))"}

Known = tuple[dict[str, str], tuple[str, ...]]  # the table's columns (name -> kind), primary key


def driver_url(url: str) -> str:
    """`url` naming its driver (`postgresql://` -> `postgresql+psycopg://`, `mysql://` and
    `mariadb://` -> PyMySQL); UnsupportedURL for any other database or driver."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise UnsupportedURL(f"SqlSink takes postgresql://, mysql://, mariadb:// or sqlite:/// "
                             f"URLs, not {mask_url(url)}")
    return with_sql_driver(url)


def open_engine(url: str, *, connect_timeout: int | None = None) -> Any:
    """A SQLAlchemy engine for `url`; ConfigError (one line) without SQLAlchemy or driver.
    `connect_timeout`: seconds a new connection may take (PostgreSQL and MySQL drivers; a
    probe sets it so a host that drops packets does not hold it for minutes)."""
    what = {"postgresql": "psycopg 3", "postgres": "psycopg 3", "mysql": "PyMySQL",
            "mariadb": "PyMySQL"}.get(scheme_of(url).split("+")[0], "SQLAlchemy")
    full = driver_url(url)
    try:
        import sqlalchemy as sa
    except ImportError:
        raise ConfigError(f"SqlSink needs SQLAlchemy and {what}: {INSTALL}") from None
    if full.startswith(("mysql", "mariadb")) and "charset=" not in full:
        full += ("&" if "?" in full else "?") + "charset=utf8mb4"
    try:
        timeout = ({"connect_args": {"connect_timeout": connect_timeout}}
                   if connect_timeout and not full.startswith("sqlite") else {})
        engine = sa.create_engine(full, pool_pre_ping=True, **timeout)
    except ImportError:
        raise ConfigError(f"SqlSink needs {what}: {INSTALL}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed URL
        raise ConfigError(f"cannot use database URL {mask_url(url)}: {type(exc).__name__}: "
                          f"{mask_url(str(exc))}") from None
    statement = _SESSION.get("mysql" if engine.dialect.name == "mariadb" else engine.dialect.name)
    if statement:
        @sa.event.listens_for(engine, "connect")
        def _session(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(statement)
            cursor.close()
            dbapi_connection.commit()
    return engine


class SqlTable:
    """One table and its ledger at one URL; connections are opened on first use, once per
    process (a forked child opens its own), and shared by the sinks bound to the table."""

    def __init__(self, url: str, *, table: str, schema: str | None, ledger: str) -> None:
        driver_url(url)  # an unsupported URL fails at once, not at the first batch
        self.url, self.name, self.schema, self.ledger_name = url, table, schema, ledger
        self.qualified = f"{schema}.{table}" if schema else table
        self._reset()

    def _reset(self) -> None:
        self._engines = ProcessEngines(lambda: open_engine(self.url))
        self._dialect: Dialect | None = None
        self.known: Known | None = None  # as last seen by this process
        self._ledger_ready = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("url", "name", "schema", "ledger_name", "qualified")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def open(self) -> tuple[Any, Dialect]:
        """This process's engine and dialect."""
        engine, dialect = self._engines.get(), self._dialect
        if dialect is None or dialect.engine is not engine:
            dialect = self._dialect = dialect_for(engine)
        return engine, dialect

    def forget(self) -> None:
        """Look at the table and ledger again: they may have been dropped or altered."""
        self.known, self._ledger_ready = None, False

    def close(self) -> None:
        self._engines.close()

    @property
    def dialect(self) -> Dialect:
        return self.open()[1]

    def target(self) -> str:
        return self.dialect.target(self.name, self.schema)

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> list[Any]:
        """One statement in a transaction of its own; its rows (none for a definition)."""
        with self.open()[0].begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(statement) if params is None else cursor.execute(statement, params)
                return list(cursor.fetchall()) if cursor.description else []
            finally:
                cursor.close()

    def reflect(self, name: str | None = None) -> Known | None:
        """The columns and primary key of the table (or of `name`), None when it is missing."""
        import sqlalchemy as sa

        engine, dialect = self.open()
        inspector = sa.inspect(engine)
        try:
            columns = inspector.get_columns(name or self.name, schema=self.schema)
        except sa.exc.NoSuchTableError:
            return None
        key = inspector.get_pk_constraint(name or self.name, schema=self.schema)
        return ({c["name"]: dialect.table_kind(c) for c in columns},
                tuple(key.get("constrained_columns") or ()))

    def define(self, statement: str, done: Callable[[], bool], where: str) -> None:
        """Run a CREATE or ALTER; a failure is fine when `done()` then holds (another process
        got there first). A definition the database refuses is a BatchError."""
        try:
            self.execute(statement)
        except Exception as exc:  # noqa: BLE001 - sorted below
            if done():
                return
            if self.dialect.classify(exc) == "permanent":
                raise BatchError(f"{where}: {self.dialect.message(exc, self.qualified)}") from None
            raise

    def ensure(self, kinds: dict[str, str], *, key: Sequence[str], where: str) -> None:
        """The table exists with every column of the batch (`kinds`), of kinds the batch
        fits; made with `key` as primary key, which a merge (a non-empty `key`) needs."""
        dialect, target = self.dialect, self.target()
        known = self.known or self.reflect()
        if known is None:
            self.define(dialect.create_table(target, kinds, key, SEQ_COLUMN),
                        lambda: self.reflect() is not None, where)
            known = self.reflect()
        if known is None or any(name not in known[0] for name in kinds):
            known = self.reflect() or ({}, ())  # another process may have added them
            for name in [n for n in kinds if n not in known[0]]:
                self.define(dialect.add_column(target, name, kinds[name], SEQ_COLUMN),
                            lambda n=name: n in (self.reflect() or ({}, ()))[0], where)
                log.info("%s: added column %s (%s)", self.qualified, name, kinds[name])
            known = self.reflect() or ({}, ())
        columns, primary = known
        if key and set(primary) != set(key):
            raise BatchError(f"{where}: table {self.qualified} has primary key "
                             f"({', '.join(primary)}); a merge on ({', '.join(key)}) needs it")
        for name, kind in kinds.items():
            if not fits(columns[name], kind):
                raise BatchError(f"{where}: column {name} of table {self.qualified} is "
                                 f"{columns[name]}, the batch's is {kind}")
        self.known = known

    # -- the ledger ----------------------------------------------------------------------
    def ensure_ledger(self, where: str) -> None:
        """The ledger table exists (made once per process when missing)."""
        if not self._ledger_ready:
            dialect = self.dialect
            self.define(dialect.create_ledger(dialect.target(self.ledger_name, self.schema)),
                        lambda: self.reflect(self.ledger_name) is not None, where)
            self._ledger_ready = True

    def ledger_sql(self) -> tuple[str, str]:
        """The ledger's lookup and insert of one batch, with the driver's placeholders."""
        dialect = self.dialect
        p, rows = dialect.placeholder, dialect.quote("rows")
        ledger = dialect.params(dialect.target(self.ledger_name, self.schema))
        return (f"SELECT {rows} FROM {ledger} WHERE sink_table = {p} AND run_id = {p} "
                f"AND shard = {p} AND batch = {p}",
                f"INSERT INTO {ledger} (sink_table, run_id, shard, batch, {rows}) "
                f"VALUES ({p}, {p}, {p}, {p}, {p})")

    def recorded(self, run_id: str, shard: int, batch: int) -> int | None:
        """The rows the ledger recorded for the batch, None when it has no such batch."""
        found = self.execute(self.ledger_sql()[0], (self.qualified, run_id, shard, batch))
        return int(found[0][0]) if found else None


__all__ = ["DRIVERS", "SqlTable", "driver_url", "open_engine"]
