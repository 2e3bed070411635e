"""Lazy package faces (PEP 562): a package names its public classes without importing the
modules that define them, so `import etl` or `import etl.sinks` stays cheap and a class's
heavy imports (pandas, pyarrow, a database driver) happen when it is first used. Also how a
native library is imported with a setting it reads once, as it loads (`import_with_setting`).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[
        Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, whose public names are `exports`
    (name -> defining module). A name is imported on first use and then kept."""

    def __getattr__(name: str) -> Any:
        home = exports.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)  # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


class LazyModule:
    """A module imported when one of its names is first read: `pd = LazyModule("pandas")`
    at the top of a module that defines pipelines, stages or shard plans lets a pipeline be
    built without importing pandas (~0.25 s), so `etl run` can begin parsing its source
    first and import pandas while the parse runs. Each name is looked up once, then kept
    on the instance: later reads cost what a module attribute read costs."""

    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):  # copy, pickle and doctest probes
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self._lazy_name), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        loaded = self._lazy_name in sys.modules
        return f"<lazy module {self._lazy_name!r}{'' if loaded else ' (not imported yet)'}>"


def import_with_setting(module: str, name: str, value: str) -> None:
    """Import `module` with the environment variable `name` set to `value` for that import
    only: for native libraries that read a setting once, as they load (OpenBLAS's thread
    count, Arrow's default pool). The caller checks that `name` is not set already."""
    os.environ[name] = value
    try:
        importlib.import_module(module)
    finally:
        del os.environ[name]
