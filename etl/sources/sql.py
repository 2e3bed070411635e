"""A database table as a source: range shards over a unique integer key, read by keyset
pagination, on PostgreSQL, MariaDB/MySQL or anything SQLAlchemy speaks.

    SqlSource("postgresql://etl@db/shop", table="orders", key="order_id")

The table is never loaded whole. A run fits its RangeShards on the key's MIN and MAX, and
each batch is one query, `WHERE key in the shard's range AND key > cursor ORDER BY key
LIMIT n`: it reads only its rows through the key's index, a resumed batch reads exactly
the same rows, and rows inserted after the run started (keys past a shard's cursor) are
picked up by the shard that owns them. That takes a key that is unique and never null,
checked when the run opens; a table without one is a clear error, as are hash shards
(they cannot be pushed down to SQL).

The fingerprint is the table's row count, MIN and MAX of the key: a table that grew or lost
rows is new data (a new run), while updates in place are not noticed (give such tables an
updated-at column and backfill by window instead: `etl backfill` adds `start <= column <
end` to every query of its run).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from datetime import date, datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa

from etl.core.errors import ConfigError, SourceError, SourceUnreachable
from etl.core.sql_engines import ProcessEngines
from etl.core.urls import mask_url, with_sql_driver
from etl.sources.base import Batch, PlanChecked, SchemaKinds, Source, Windowed
from etl.sources.windows import Window
from shards import RangeShards, ShardPlan

log = logging.getLogger(__name__)

#: Seconds one reading of the table's row count and key range serves. Opening a run asks
#: for them three times within moments (fingerprint, row count, plan fit): one query instead
#: of three full counts on a big table, while a process that asks again later sees the table
#: as it is then.
STATS_FRESH_S = 5.0


class SqlSource(Source, Windowed, PlanChecked, SchemaKinds):
    """Rows of `table` (optionally `schema.table`) at `url`, paged by the unique `key`."""

    def __init__(self, url: str, *, table: str, key: str, schema: str | None = None,
                 columns: list[str] | None = None) -> None:
        self.url, self.table_name, self.key, self.schema = url, table, key, schema
        self.columns = list(columns) if columns else None
        self._engines = ProcessEngines(self._open_engine)  # a forked child opens its own
        self._table: Any = None
        self._checked = False
        self._stats_read: tuple[float, tuple[int, Any, Any]] | None = None
        self.window: Window | None = None  # a backfill's rows only (etl backfill)

    def __repr__(self) -> str:
        return f"SqlSource({mask_url(self.url)!r}, table={self.qualified!r}, key={self.key!r})"

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table_name}" if self.schema else self.table_name

    def describe(self) -> str:
        window = f" where {self.window.describe()}" if self.window else ""
        return f"sql table {self.qualified} at {mask_url(self.url)} by {self.key}{window}"

    def windowed(self, window: Window) -> "SqlSource":
        """The same table limited to start <= window.column < end, in every query."""
        windowed = copy.copy(self)
        windowed.window, windowed._stats_read = window, None
        return windowed

    def _where(self) -> list[Any]:
        """The window's condition (none without a window), bounds in the column's type."""
        if self.window is None:
            return []
        table = self._sa_table()
        if self.window.column not in table.c:
            raise SourceError(f"{self.describe()}: window column {self.window.column} is not "
                              f"in the table; columns are: {', '.join(c.name for c in table.c)}")
        column = table.c[self.window.column]
        low, high = (_bound(text, column) for text in (self.window.start, self.window.end))
        return [column >= low, column < high]

    # -- connection and table ------------------------------------------------------------
    def _engine(self) -> Any:
        return self._engines.get()

    def close(self) -> None:
        """Close this process's connections (opened again when the source is next read)."""
        self._engines.close()

    def _open_engine(self) -> Any:
        try:
            import sqlalchemy as sa
        except ImportError:
            raise ConfigError("SqlSource needs SQLAlchemy and a driver: pip install "
                              "'dramatiq-etl[sql]'") from None
        try:
            return sa.create_engine(with_sql_driver(self.url), pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - unknown dialect, missing driver
            raise ConfigError(f"cannot use database URL {mask_url(self.url)}: "
                              f"{type(exc).__name__}: {mask_url(str(exc))}") from None

    def _sa_table(self) -> Any:
        import sqlalchemy as sa

        if self._table is None:
            try:
                self._table = sa.Table(self.table_name, sa.MetaData(), schema=self.schema,
                                       autoload_with=self._engine())
            except sa.exc.NoSuchTableError:
                raise SourceError(f"{self.describe()}: no such table") from None
            except sa.exc.OperationalError as exc:
                raise SourceUnreachable(f"{self.describe()}: cannot connect: "
                                  f"{mask_url(str(exc.orig))}") from None
            names = [c.name for c in self._table.columns]
            wanted = [self.key, *(self.columns or [])]
            missing = [c for c in wanted if c not in names]
            if missing:
                raise SourceError(f"{self.describe()}: no column(s) {', '.join(missing)}; "
                                  f"columns are: {', '.join(names)}")
        return self._table

    def _key_column(self) -> Any:
        return self._sa_table().c[self.key]

    def _selected(self) -> list[Any]:
        table = self._sa_table()
        names = self.columns or [c.name for c in table.columns]
        return [table.c[name] for name in dict.fromkeys([self.key, *names])]

    def _scalar_row(self, *expressions: Any, windowed: bool = True) -> tuple[Any, ...]:
        import sqlalchemy as sa

        query = sa.select(*expressions).select_from(self._sa_table())
        if windowed:
            query = query.where(*self._where())
        with self._engine().connect() as conn:
            return tuple(conn.execute(query).one())

    def _check_key(self) -> None:
        """Keyset pagination skips or repeats rows unless the key is unique and not null."""
        import sqlalchemy as sa

        if self._checked:
            return
        key = self._key_column()
        if not isinstance(key.type, sa.Integer):
            raise ConfigError(f"{self.describe()}: key {self.key!r} is {key.type}, not an "
                              "integer column")
        inspector, where = sa.inspect(self._engine()), (self.table_name, self.schema)
        unique = [inspector.get_pk_constraint(*where).get("constrained_columns")]
        unique += [u["column_names"] for u in inspector.get_unique_constraints(*where)]
        unique += [i["column_names"] for i in inspector.get_indexes(*where) if i.get("unique")]
        if [self.key] not in [list(columns or []) for columns in unique]:
            raise ConfigError(f"{self.describe()}: key {self.key!r} must be the primary key or "
                              "have a unique index (batches page through it)")
        rows, keyed = self._scalar_row(sa.func.count(), sa.func.count(key), windowed=False)
        nulls = rows - keyed
        if nulls:
            raise SourceError(f"{self.describe()}: {nulls} row(s) have a null {self.key}; "
                              "they could not be paged and would be lost")
        self._checked = True

    def schema_kinds(self) -> dict[str, str]:
        """The selected columns' kinds, from the table's declared types (for schema drift)."""
        import sqlalchemy as sa

        def kind(column: Any) -> str:
            kinds = ((sa.Boolean, "boolean"), (sa.Integer, "integer"), (sa.Float, "float"),
                     (sa.DateTime, "datetime"), (sa.Date, "date"), (sa.String, "string"))
            return next((name for base, name in kinds if isinstance(column.type, base)), "other")

        return {column.name: kind(column) for column in self._selected()}

    def _stats(self) -> tuple[int, Any, Any]:
        """(rows, MIN(key), MAX(key)) of the table (in the window), read at most once per
        STATS_FRESH_S."""
        import sqlalchemy as sa

        now = time.monotonic()
        if self._stats_read is None or now - self._stats_read[0] >= STATS_FRESH_S:
            key = self._key_column()
            count, low, high = self._scalar_row(sa.func.count(), sa.func.min(key), sa.func.max(key))
            self._stats_read = (now, (int(count), low, high))
        return self._stats_read[1]

    # -- the Source contract ---------------------------------------------------------------
    def fingerprint(self) -> str:
        seen = json.dumps([self.describe(), *self._stats()], default=str)
        return hashlib.sha256(seen.encode()).hexdigest()

    def row_count(self) -> int | None:
        return self._stats()[0]

    def sample(self, columns: list[str]) -> pd.DataFrame:
        """The key's MIN and MAX: all a range plan fits on (the table is not read)."""
        if columns != [self.key]:
            raise ConfigError(f"{self.describe()}: shard by RangeShards({self.key!r}, n); "
                              f"a table cannot be split by {', '.join(columns)}")
        self._check_key()
        _, low, high = self._stats()
        return pd.DataFrame({self.key: pd.array([low, high], dtype="Int64")})

    def check_plan(self, plan: ShardPlan) -> None:
        """Only range shards over the key can be pushed down to SQL."""
        if not isinstance(plan, RangeShards) or plan.column != self.key:
            raise ConfigError(f"{self.describe()}: shard by RangeShards({self.key!r}, n), not "
                              f"{plan.describe()}: only key ranges can be pushed down to SQL")

    def prepare(self, plan: ShardPlan) -> None:
        self._shard_range(plan, 0)

    def _shard_range(self, plan: ShardPlan, shard: int) -> tuple[int | None, int | None]:
        """[low, high) of the key in `shard`; None is unbounded (the first and last shard
        also own keys outside the fitted range, so later inserts are never lost)."""
        self.check_plan(plan)
        if plan.bounds is None:
            raise ConfigError(f"{plan.describe()} is not fitted")
        if not 0 <= shard < plan.shards:
            raise SourceError(f"shard {shard} out of range 0..{plan.shards - 1}")
        inner = [int(edge) for edge in plan.bounds[1:-1]]
        return (inner[shard - 1] if shard > 0 else None,
                inner[shard] if shard < plan.shards - 1 else None)

    def read_batch(self, plan: ShardPlan, shard: int, *, after: Any, limit: int) -> Batch:
        import sqlalchemy as sa

        low, high = self._shard_range(plan, shard)
        key = self._key_column()
        where = self._where() + ([key >= low] if low is not None else [])
        where += [key < high] if high is not None else []
        where += [key > int(after)] if after is not None else []
        query = (sa.select(*self._selected()).where(*where).order_by(key).limit(limit + 1))
        try:
            with self._engine().connect() as conn:
                result = conn.execute(query)
                names = list(result.keys())
                rows = result.fetchall()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(f"{self.describe()} shard {shard}: "
                              f"{mask_url(str(getattr(exc, 'orig', exc)))}") from None
        page = rows[:limit]
        table = pa.table({name: pa.array([row[i] for row in page], from_pandas=True)
                          for i, name in enumerate(names)}) if page else \
            pa.table({name: pa.array([], type=pa.null()) for name in names})
        end = int(page[-1][0]) if page else after
        return Batch(table=table, cursor_start=after, cursor_end=end, exhausted=len(rows) <= limit)


def _bound(text: str, column: Any) -> Any:
    """A window bound as written (ISO date or time, or a number) in `column`'s type; a naive
    time is UTC for a time-zone-aware column."""
    import sqlalchemy as sa

    try:
        if isinstance(column.type, sa.DateTime):
            moment = datetime.fromisoformat(text)
            if getattr(column.type, "timezone", False) and moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return moment
        if isinstance(column.type, sa.Date):
            return date.fromisoformat(text[:10])
        if isinstance(column.type, sa.Integer):
            return int(text) if text.lstrip("-").isdigit() else float(text)
        if isinstance(column.type, sa.Numeric):
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"window bound {text!r} does not fit column {column.name} "
                          f"({column.type}): {exc}") from None
    if isinstance(column.type, sa.String):
        return text
    raise ConfigError(f"cannot window on column {column.name} of type {column.type}")


__all__ = ["SqlSource"]
