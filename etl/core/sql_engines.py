"""SQLAlchemy engines, one per process, for the SQL source and the SQL sink.

A connection pool must not cross a fork: a child that used its parent's pooled connections
would talk over the parent on the same sockets. Each process opens its own engine on first
use; a forked child leaves the pool it inherited alone (`dispose(close=False)`), so the
parent's connections are neither used nor closed under it.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable


class ProcessEngines:
    """The engine `open_engine()` makes, one per process, made on first use."""

    def __init__(self, open_engine: Callable[[], Any]) -> None:
        self._open = open_engine
        self._lock = threading.Lock()
        self._engines: dict[int, Any] = {}

    def get(self) -> Any:
        """This process's engine."""
        with self._lock:
            engine = self._engines.get(os.getpid())
            if engine is None:
                for inherited in self._engines.values():  # a forked child: the parent's pool
                    inherited.dispose(close=False)  # is left alone, not closed under it
                engine = self._open()
                self._engines = {os.getpid(): engine}
            return engine

    def close(self) -> None:
        """Close this process's connections (an engine is opened again when next asked)."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines = {}


__all__ = ["ProcessEngines"]
