"""SQLite connections shared by the state store and the result store.

WAL journal (readers never block the writer), a busy timeout (concurrent writers wait
instead of failing), synchronous=NORMAL, one connection per thread and per process, and
write transactions taken at once with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager, Iterator

from etl.core.errors import ConfigError, StoreCorrupt, StoreUnwritable
from etl.core.urls import mask_url, parse_url

BUSY_TIMEOUT_S = 30.0

#: Connections a forked child inherited. Never closed: closing one in the child could
#: checkpoint and delete the WAL file its parent is still using.
_INHERITED: list[sqlite3.Connection] = []


def path_of(url: str) -> str:
    """The file path in `sqlite:///relative.db`, `sqlite:////absolute.db` or
    `sqlite:///:memory:`."""
    parts = parse_url(url)
    path = parts.path if parts.scheme == "sqlite" and url.startswith("sqlite:///") else ""
    if not path:
        raise ConfigError(f"SQLite URL must look like sqlite:///path/state.db, got {mask_url(url)!r}")
    return path


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode (it stays so, in the file). Switching takes an exclusive
    lock and SQLite answers "database is locked" at once, without its busy handler, while
    another process is creating the same new database: retry within the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Connections:
    """One connection per thread and per process; one shared, locked connection for
    `:memory:` (every connection to `:memory:` would be a database of its own)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.memory = path == ":memory:"
        self._lock: ContextManager[Any] = threading.RLock() if self.memory else nullcontext()
        self._guard = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._shared: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            raise explained(exc, self.path) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not self.memory:
            _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._guard:
            self._opened.append(conn)
        return conn

    def _current(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            with self._guard:
                if self._pid != os.getpid():
                    if not self.memory:  # a :memory: database lives on as the child's copy
                        _INHERITED.extend(self._opened)
                        self._reset()
                    self._pid = os.getpid()
        if self.memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held alone for `:memory:`. A file that is no SQLite
        database, or a disk that refuses the write, is one error naming the file."""
        with self._lock:
            try:
                yield self._current()
            except sqlite3.DatabaseError as exc:
                raise explained(exc, self.path) from exc

    def close(self) -> None:
        """Close every connection this process opened; the next use opens new ones."""
        with self._guard:
            if self._pid == os.getpid():
                for conn in self._opened:
                    conn.close()
            else:
                _INHERITED.extend(self._opened)
            self._reset()




#: What SQLite says when the disk, not the database, is the problem.
_UNWRITABLE = ("disk is full", "readonly database", "unable to open database", "disk i/o error")
#: What it says when the file is not a (whole) SQLite database.
_CORRUPT = ("file is not a database", "malformed")


def explained(exc: sqlite3.DatabaseError, path: str) -> Exception:
    """`exc` as an error that names the database file and what to do, when it is one of the
    failures a person must fix (a full or read-only disk, a file that is no database);
    `exc` itself otherwise (a lock, a constraint: the caller's business)."""
    text = str(exc).lower()
    if any(mark in text for mark in _UNWRITABLE):
        return StoreUnwritable(f"cannot write SQLite database {path}: {exc}; free space or "
                               "make its directory writable, then run the command again")
    if any(mark in text for mark in _CORRUPT):
        return StoreCorrupt(f"{path} is not a readable SQLite database ({exc}): move it aside "
                            "(a new one is created) or point the setting at another file")
    return exc


def open_path(url: str) -> str:
    """The database path of `url`, resolved, its directory created (`:memory:` as it is)."""
    path = path_of(url)
    if path == ":memory:":
        return path
    resolved = Path(path).expanduser().resolve()
    resolved.parent.mkdir(parents=True, exist_ok=True)
    return str(resolved)


@contextmanager
def write(db: Connections) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (BEGIN IMMEDIATE) so it never deadlocks on an
    upgrade from reader to writer; rolled back on any error."""
    with db.use() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
