"""Where a project's settings and stores are, seen from anywhere under it.

A notebook kernel starts in `notebooks/`, a script may run from anywhere, but the state
store `etl run` wrote is relative to the project root. These helpers find that root and make
the configured URLs absolute against it, and refuse to "open" a SQLite store that does not
exist (opening would create it empty and show "no runs").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from etl.core.config import Settings
from etl.core.errors import ConfigError
from etl.core.sqlite_db import path_of
from etl.core.urls import mask_url


def find_project_dir(start: str | Path | None = None) -> Path:
    """The directory whose settings apply: `start` (default: the current directory) or the
    nearest parent holding `etl.toml` or a `.etl/` state directory, else `start` itself.

    Jupyter starts a kernel in the notebook's own directory (`notebooks/`), while `etl run`
    was run from the project root: looking upwards finds the root's settings and state.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "etl.toml").is_file() or (folder / ".etl").is_dir():
            return folder
    return here


def anchored(url: str, base: Path, *, plain_path_ok: bool = False) -> str:
    """`url` with a relative SQLite or local-file path made absolute against `base`, so the
    stores open what `etl` run in `base` opened, whatever the current directory is."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:" and not Path(path).expanduser().is_absolute():
            return f"sqlite:///{base / path}"
        return url
    if url.startswith("file://") or (plain_path_ok and "://" not in url):
        path = url[len("file://"):] if url.startswith("file://") else url
        if not Path(path or ".").expanduser().is_absolute():
            return f"file://{base / path}"
    return url


def require_sqlite_file(url: str, what: str, hint: str) -> None:
    """A SQLite store that does not exist would be created empty by opening it: refuse."""
    if url.startswith("sqlite:") and path_of(url) != ":memory:" \
            and not Path(path_of(url)).expanduser().is_file():
        raise ConfigError(f"no {what} at {mask_url(url)}: {hint}")


@dataclass
class Backend:
    """One configured store, for display: its setting, masked URL and where it came from."""

    setting: str
    url: str
    source: str


def configured_backends(conf: Settings) -> list[Backend]:
    """The state, object and result stores `conf` names, masked, with where each came from."""
    return [Backend(name, mask_url(getattr(conf, name)), conf.sources[name])
            for name in ("state_url", "objects_url", "results_url")]

__all__ = ["Backend", "anchored", "configured_backends", "find_project_dir", "require_sqlite_file"]
