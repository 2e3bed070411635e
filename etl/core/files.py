"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import itertools
import os
import re
import secrets
from pathlib import Path

from etl.core.processes import HOST, owner_is_dead

#: Prefix of the temporary files; listings skip them.
TEMP_PREFIX = ".tmp-"
#: A temporary file names the host and process writing it, so a sweep can tell one whose
#: writer is dead (killed mid-write) from one still being written.
_TEMP_NAME = re.compile(r"^\.tmp-(?P<host>[^.]+)\.(?P<pid>\d+)\.")


def _host() -> str:
    """This host's name as a temporary file carries it (no "." or "/")."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", HOST) or "host"


_HOST_PART = _host()
#: Numbers the temporary files of this process (with its pid and a random tail: unique).
_SEQUENCE = itertools.count()
#: Folders known to exist: a write into one makes no mkdir call first (~20 us each).
_FOLDERS: set[Path] = set()
_MAX_FOLDERS = 10_000


def atomic_write(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a synced temporary file renamed over it. The file
    gets the mode open() would give it (0666 less the umask). Written with plain system
    calls: mkstemp's name generator, an fchmod and a buffered file object cost ~60 us a file,
    which a run writing two files per batch pays per batch."""
    folder = target.parent
    temp = folder / (f"{TEMP_PREFIX}{_HOST_PART}.{os.getpid()}.{next(_SEQUENCE)}"
                     f"{secrets.token_hex(4)}")
    if folder not in _FOLDERS:
        _make_folder(folder)
    try:
        fd = _create(temp)
    except FileNotFoundError:  # the folder was removed since it was made: make it again
        _make_folder(folder)
        fd = _create(temp)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _make_folder(folder: Path) -> None:
    """Make `folder` (and its parents) and remember it exists."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(_FOLDERS) >= _MAX_FOLDERS:  # a long-lived worker writes under many runs
        _FOLDERS.clear()
    _FOLDERS.add(folder)


def _create(temp: Path) -> int:
    """A new file, never an existing one, with the mode open() would give it."""
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def orphaned(temp: Path) -> bool:
    """A temporary file whose writer is provably gone: written by a process of this host
    that no longer runs (killed mid-write). Files of other hosts are not judged here."""
    match = _TEMP_NAME.match(temp.name)
    return bool(match) and match["host"] == _HOST_PART and owner_is_dead(f"{HOST}:{match['pid']}")
