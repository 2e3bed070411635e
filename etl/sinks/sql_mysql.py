"""MariaDB 10.3+ and MySQL 8 for SqlSink: a batch goes to a temporary staging table (typed
after the batch, so nothing is coerced there), filled by PyMySQL's multi-row INSERT, or by
LOAD DATA LOCAL INFILE of pyarrow's CSV (a merge about three times faster) when the URL
opts in with `?local_infile=1` and the server allows it; then one INSERT ... SELECT moves
it into the table under strict mode, so a value that does not fit the table's column fails
the batch. LOAD DATA LOCAL is not the default because its client side lets the server ask
for any local file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Sequence

import pyarrow as pa

from etl.core.urls import mask_url
from etl.sinks.sql_dialects import STAGE, Dialect, Refused
from etl.sinks.sql_values import csv_bytes, kind_of, python_rows, without_zone

log = logging.getLogger(__name__)


class MySQL(Dialect):
    """MariaDB 10.3+ and MySQL 8: a strict-mode INSERT ... SELECT from a staging table."""

    quote_char = "`"
    seq_type = "CHAR(40) CHARACTER SET ascii COLLATE ascii_bin"
    ledger_text = "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ledger_stamp = "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    types = {**Dialect.types, "float": "DOUBLE", "timestamptz": "DATETIME(6) COMMENT 'UTC'",
             "timestamp": "DATETIME(6)", "text": "LONGTEXT", "null": "LONGTEXT"}
    stage_types = {**types, "boolean": "TINYINT", "timestamptz": "DATETIME(6)"}
    _infile: bool | None = None

    def column_type(self, kind: str, *, key: bool) -> str:
        if key and kind in ("text", "null"):
            # a primary key needs a bounded length, and a binary collation without padding
            # tells keys apart as pandas does ('a' is not 'A', nor 'a ')
            nopad = "utf8mb4_nopad_bin" if self.engine.dialect.is_mariadb else "utf8mb4_0900_bin"
            return f"VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {nopad}"
        return self.types[kind]

    def zoned(self, column: dict[str, Any]) -> bool:
        return (column.get("comment") or "").upper() == "UTC"  # DATETIME(6) holding UTC

    def local_infile(self, cursor: Any) -> bool:
        """LOAD DATA LOCAL: only when the URL says local_infile=1 and the server allows it."""
        if self._infile is None:
            wanted = str(self.engine.url.query.get("local_infile", "")).lower() in ("1", "true")
            allowed = False
            if wanted:
                cursor.execute("SELECT @@local_infile")
                allowed = bool(int(cursor.fetchone()[0]))
                if not allowed:
                    log.warning("%s: the server refuses LOAD DATA LOCAL (local_infile=OFF); "
                                "loading by multi-row INSERT", mask_url(str(self.engine.url)))
            self._infile = allowed
        return self._infile

    def load(self, cursor: Any, target: str, bare: str, data: pa.Table, *, key: Sequence[str],
             update: Sequence[str], seq: str) -> None:
        """Staging table, then one INSERT ... SELECT; a merge's ON DUPLICATE KEY UPDATE sets
        the sequence column last: MySQL evaluates the list left to right with values already
        updated, so an earlier `_etl_seq = ...` would make every later comparison false."""
        names = data.column_names
        cols = ", ".join(map(self.quote, names))
        defs = ", ".join(
            f"{self.quote(n)} {self.seq_type if n == seq else self.stage_types[kind_of(t)]}"
            for n, t in zip(names, data.schema.types))
        cursor.execute(f"DROP TEMPORARY TABLE IF EXISTS {STAGE}")
        cursor.execute(f"CREATE TEMPORARY TABLE {STAGE} ({defs}){self.table_options}")
        try:
            data = without_zone(data, booleans_as_int=True)
            if self.local_infile(cursor):
                self._load_data(cursor, cols, data)
            else:
                marks = ", ".join(["%s"] * len(names))
                cursor.executemany(f"INSERT INTO {STAGE} ({self.params(cols)}) VALUES ({marks})",
                                   python_rows(data))
            statement = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {STAGE}"
            if key:
                s = self.quote(seq)
                newer = f"COALESCE({target}.{s}, '') < VALUES({s})"
                sets = [f"{q} = IF({newer}, VALUES({q}), {target}.{q})"
                        for q in map(self.quote, [*update, seq])]  # seq last: see above
                statement += (f" ORDER BY {', '.join(map(self.quote, key))} "
                              f"ON DUPLICATE KEY UPDATE {', '.join(sets)}")
            cursor.execute(statement)
        finally:
            try:
                cursor.execute(f"DROP TEMPORARY TABLE IF EXISTS {STAGE}")
            except Exception:  # noqa: BLE001 - the connection is gone: the error above tells
                pass

    def _load_data(self, cursor: Any, cols: str, data: pa.Table) -> None:
        handle, path = tempfile.mkstemp(prefix="etl-sql-", suffix=".csv")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(csv_bytes(data, null="NULL"))  # unquoted NULL: SQL NULL
            cursor.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {STAGE} CHARACTER SET utf8mb4 "
                           "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' "
                           f"LINES TERMINATED BY '\n' ({self.params(cols)})", (path,))
        finally:
            os.unlink(path)
        cursor.execute("SHOW WARNINGS LIMIT 1")  # LOCAL turns data errors into warnings
        warning = cursor.fetchone()
        if warning:
            raise Refused(f"{warning[2]} (code {warning[1]})")

    #: Server errors a retry can mend: disk or table full, out of memory, connections,
    #: shutdown, lock wait timeout, deadlock, interrupted, killed.
    TRANSIENT = frozenset({1021, 1030, 1037, 1038, 1040, 1041, 1053, 1077, 1080, 1114, 1152,
                           1158, 1159, 1160, 1161, 1317, 1927})

    def classify(self, exc: BaseException) -> str:
        import pymysql

        orig = getattr(exc, "orig", None) or exc
        if isinstance(orig, Refused):
            return "permanent"
        if not isinstance(orig, pymysql.err.MySQLError):
            return "transient"
        code = orig.args[0] if orig.args and isinstance(orig.args[0], int) else 0
        if code in (1205, 1213):
            return "retry"
        if code == 1062:
            return "unique"
        if code < 1000 or 2000 <= code < 3000 or code in self.TRANSIENT:
            return "transient"  # client-side codes (2000-2999) are the connection's
        return "permanent"

    def message(self, exc: BaseException, table: str) -> str:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig.args[1] if len(orig.args) > 1 else orig).splitlines()[0]
        return mask_url(text.replace(STAGE, table))


__all__ = ["MySQL"]
