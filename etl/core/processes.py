"""Processes: who a lease owner is, whether it still lives, and children that die with their
parent.

A lease owner names its process as `host:pid@start` (etl.runtime.leases), where `start` is
the process's start time in clock ticks since boot (/proc/<pid>/stat, field 22). On the same
host that is enough to prove an owner dead: no process has that pid, it is a zombie, or the
pid now belongs to a process started at another time (the pid was reused). Owners of other
hosts, or in a form not understood, are never called dead: their leases expire instead.

Forked worker processes (`etl worker`'s supervisor, embedded `etl run`) call
`die_with_parent` first: the kernel SIGKILLs them when their parent dies (Linux
PR_SET_PDEATHSIG), a parent that died before that call is noticed at once (the child is then
already re-parented), and a watchdog thread polls the parent where prctl is not available.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import time

log = logging.getLogger(__name__)

#: This machine's name, as lease owners carry it.
HOST = socket.gethostname()

#: Seconds between two looks of a child's watchdog at its parent.
WATCHDOG_INTERVAL = 0.5

_PR_SET_PDEATHSIG = 1


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc, or None when no such process exists; raises
    OSError other than "not found" (no /proc on this system, for instance)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], fields[19]  # state (field 3), starttime (field 22)


def start_time(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot), or None where /proc cannot tell."""
    try:
        found = _stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    return found[1] if found else None


def process_name(pid: int | None = None) -> str:
    """`host:pid@start` of this process (or `pid`); `host:pid` where the start is unknown."""
    pid = os.getpid() if pid is None else pid
    start = start_time(pid)
    return f"{HOST}:{pid}@{start}" if start else f"{HOST}:{pid}"


def owner_is_dead(owner: str | None) -> bool:
    """Whether the process of lease owner `owner` (`host:pid[@start][:thread]`) is provably
    gone: it ran on this host and its pid is free, a zombie, or another process's."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != HOST:
        return False
    pid_text, _, start = parts[1].partition("@")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return start_time(pid) != start if start else False
    try:
        found = _stat(pid)
    except (OSError, ValueError, IndexError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    if found is None:
        return True
    state, started = found
    return state in ("Z", "X", "x") or bool(start and started != start)


def die_with_parent(parent: int) -> None:
    """Called first in a forked child of `parent`: end this process when its parent dies.

    PR_SET_PDEATHSIG has the kernel SIGKILL it when the parent goes; a parent that died
    between the fork and that call has already re-parented this process (getppid differs),
    so it ends now; a watchdog thread covers systems without prctl (and any other path)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("PR_SET_PDEATHSIG not available; a watchdog thread follows the parent")
    if os.getppid() != parent:
        os._exit(1)  # orphaned before the kernel could be told: the parent is gone
    threading.Thread(target=_watch_parent, args=(parent,), name="etl-parent-watchdog",
                     daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(WATCHDOG_INTERVAL)
