"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from etl.core.processes import HOST, owner_is_dead

#: Prefix of the temporary files; listings skip them.
TEMP_PREFIX = ".tmp-"
#: A temporary file names the host and process writing it, so a sweep can tell one whose
#: writer is dead (killed mid-write) from one still being written.
_TEMP_NAME = re.compile(r"^\.tmp-(?P<host>[^.]+)\.(?P<pid>\d+)\.")


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


#: Mode of a written file: what open() would give it (0666 less the umask), not mkstemp's 0600.
FILE_MODE = 0o666 & ~_umask()


def _host() -> str:
    """This host's name as a temporary file carries it (no "." or "/")."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", HOST) or "host"


def atomic_write(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a synced temporary file renamed over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{_host()}.{os.getpid()}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def orphaned(temp: Path) -> bool:
    """A temporary file whose writer is provably gone: written by a process of this host
    that no longer runs (killed mid-write). Files of other hosts are not judged here."""
    match = _TEMP_NAME.match(temp.name)
    return bool(match) and match["host"] == _host() and owner_is_dead(f"{HOST}:{match['pid']}")
