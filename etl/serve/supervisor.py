"""The runs a server starts: one child process each (etl.serve.child), supervised.

Embedded broker: the child works the run to its end, one at a time per pipeline; a start
of the run a child already works joins it. RabbitMQ / Redis: the child opens the run,
enqueues its work for `etl worker`s (the runner with wait=False) and exits.

A child lives in a session of its own and is written down under `<project>/.etl/serve/`
(pid, pipeline, run id): a server that stops, crashes or restarts does not stop it, and the
next server takes it over (adopts a live child; starts a dead child's unfinished run again,
which resumes where its checkpoints say). Nothing here reads a run's progress: that is the
state store's, read through the Inspector (etl.serve.views).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from etl.core.errors import ConfigError, EtlError

log = logging.getLogger(__name__)

#: How long a child may take to open its run (parse or hash the source, plan the shards).
OPEN_TIMEOUT_S = 300.0

#: How long a start waits for the child of a run that is over to close down.
ENDING_WAIT_S = 60.0

#: How long a result waits for the child of a completed run to write its outcome (the run
#: is marked completed before the child has checked the sink's keys and timed the run).
OUTCOME_WAIT_S = 30.0


class StartRefused(EtlError):
    """A start the server cannot take: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field = status, field


@dataclass
class Child:
    """One child process and the run it works."""

    spec: str
    run_id: str
    pid: int
    log_path: str
    distributed: bool
    started_at: float = field(default_factory=time.time)
    process: subprocess.Popen[bytes] | None = None  # None: adopted from an earlier server
    exit_code: int | None = None

    def alive(self) -> bool:
        if self.exit_code is not None:
            return False
        if self.process is not None:
            self.exit_code = self.process.poll()
            return self.exit_code is None
        if _is_child_process(self.pid):
            return True
        self.exit_code = -1  # an adopted child ended; its status is not ours to read
        return False

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the child to end; whether it did."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def describe(self) -> dict[str, Any]:
        alive = self.alive()
        return {"pid": self.pid, "alive": alive, "exit_code": self.exit_code,
                "started_at": self.started_at, "log": self.log_path}


def _is_child_process(pid: int) -> bool:
    """Whether `pid` is alive and is a run child (not a process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc here: trust the pid
    return b"etl.serve.child" in cmdline


class Supervisor:
    """Starts, joins and keeps track of the server's run children."""

    def __init__(self, root: Path, *, distributed: bool,
                 run_status: Callable[[str], str | None]) -> None:
        self.root = root
        self.home = root / ".etl" / "serve"
        self.distributed = distributed
        #: The run's status in the state store, None when there is no such run.
        self.run_status = run_status
        self._lock = threading.Lock()
        self._pipeline_locks: dict[str, threading.Lock] = {}
        self._children: dict[str, Child] = {}  # by run id

    # -- files ---------------------------------------------------------------------------
    @property
    def outcomes(self) -> Path:
        return self.home / "outcomes"

    def outcome(self, run_id: str) -> dict[str, Any] | None:
        """What the child that worked `run_id` said at its end, if a child of a server did.
        A child of this server still closing down the run is waited for (OUTCOME_WAIT_S),
        so a result read as soon as the run completed is the one every later read gets."""
        child = self.child(run_id)
        if child is not None and not child.distributed:
            child.wait(OUTCOME_WAIT_S)
        try:
            return json.loads((self.outcomes / f"{run_id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _record(self, child: Child) -> None:
        folder = self.home / "children"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{child.run_id}.json").write_text(json.dumps(
            {"spec": child.spec, "run_id": child.run_id, "pid": child.pid,
             "log": child.log_path, "distributed": child.distributed,
             "started_at": child.started_at}), encoding="utf-8")

    def _forget(self, child: Child) -> None:
        (self.home / "children" / f"{child.run_id}.json").unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------
    def child(self, run_id: str) -> Child | None:
        """The child of `run_id` this server knows (alive or ended), if any."""
        with self._lock:
            child = self._children.get(run_id)
        if child is not None and not child.alive():
            self._forget(child)
        return child

    def working(self, spec: str) -> Child | None:
        """The live child working a run of pipeline `spec`."""
        with self._lock:
            children = [c for c in self._children.values() if c.spec == spec]
        for child in children:
            if child.alive():
                return child
            self._forget(child)
        return None

    # -- starting ------------------------------------------------------------------------
    def start(self, spec: str, *, shards: int | None, run_id: str | None, fresh: bool,
              window: dict[str, str] | None, resume: bool = False) -> tuple[str, bool]:
        """Start (or join) a run of `spec`: (run id, joined). StartRefused when the
        pipeline already works another run, or the child could not open the run."""
        with self._lock:
            lock = self._pipeline_locks.setdefault(spec, threading.Lock())
        with lock:
            if run_id is not None:
                running = self.child(run_id)
                if running is not None and running.alive() and not self._ending(running):
                    return run_id, True
                if self.run_status(run_id) == "completed":
                    return run_id, True  # the same id twice is one run: it is done
            if not self.distributed:
                busy = self.working(spec)
                if busy is not None and self._ending(busy):
                    busy = None
                if busy is not None:
                    if run_id is None and not fresh and window is None:
                        return busy.run_id, True
                    raise StartRefused(
                        f"pipeline {spec} is working run {busy.run_id}: one run at a time "
                        "per pipeline; start again once it ended, or without run_id to "
                        "join it", status=409, field="pipeline")
            child = self._launch(spec, {"shards": shards, "run_id": run_id, "fresh": fresh,
                                        "window": window, "resume": resume})
            return child.run_id, False

    def _ending(self, child: Child) -> bool:
        """Whether `child`'s run is over (failed, cancelled, completed) and the child only
        closing down: then it is waited for (up to ENDING_WAIT_S), not joined."""
        if self.distributed or self.run_status(child.run_id) in ("running", None):
            return False
        return child.wait(ENDING_WAIT_S)

    def _launch(self, spec: str, options: dict[str, Any]) -> Child:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.log"
        request = {"spec": spec, **{k: v for k, v in options.items() if v not in (None, False)},
                   "outcome_dir": str(self.outcomes)}
        if self.distributed:
            request["wait"] = False
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "etl.serve.child", json.dumps(request)], cwd=self.root,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                start_new_session=True)
        line = _first_line(process, OPEN_TIMEOUT_S)
        if line is None:
            raise StartRefused(f"the run did not open (child exit {process.poll()}): "
                               f"{_last_line(log_path)} (log {log_path})", status=503)
        said = json.loads(line)
        if "error" in said:
            process.wait(timeout=30)
            status = {"user": 422, "service": 503}.get(said.get("kind"), 500)
            raise StartRefused(said["error"], status=status)
        child = Child(spec, said["run_id"], process.pid, str(log_path),
                      bool(said.get("distributed")), process=process)
        with self._lock:
            self._children[child.run_id] = child
        self._record(child)
        log.info("run %s of %s: child %d (%s)", child.run_id, spec, child.pid, said["opened"])
        return child

    # -- a server's start and end ----------------------------------------------------------
    def take_over(self) -> list[str]:
        """Adopt the live children an earlier server left, and start again the unfinished
        runs of those that died with it (they resume). Returns the run ids taken over."""
        folder = self.home / "children"
        taken = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            if _is_child_process(int(data["pid"])):
                child = Child(data["spec"], data["run_id"], int(data["pid"]), data["log"],
                              bool(data.get("distributed")), started_at=data["started_at"])
                with self._lock:
                    self._children[child.run_id] = child
                log.info("run %s: adopted child %d", child.run_id, child.pid)
                taken.append(child.run_id)
                continue
            path.unlink(missing_ok=True)
            status = self.run_status(data["run_id"])
            if data.get("distributed") or status != "running":
                continue  # over (completed, failed, cancelled): a start takes it up, not us
            try:
                self._launch(data["spec"], {"run_id": data["run_id"]})
            except (StartRefused, ConfigError, OSError) as exc:
                log.warning("run %s: could not resume it: %s", data["run_id"], exc)
                continue
            log.info("run %s: its child had ended with the server; resumed", data["run_id"])
            taken.append(data["run_id"])
        return taken

    def stop_run(self, run_id: str) -> bool:
        """SIGTERM the process group of `run_id`'s child, if alive (used on cancel)."""
        child = self.child(run_id)
        if child is None or not child.alive():
            return False
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except OSError:
            return False
        return True

    def reap(self) -> None:
        """Notice the children that ended (a zombie must not wait for the next request)."""
        with self._lock:
            children = list(self._children.values())
        for child in children:
            if child.exit_code is None and not child.alive():
                self._forget(child)


def _last_line(path: Path) -> str:
    """The last line a child wrote to its log (why it ended, as a rule)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][-500:] if lines else "nothing logged"


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The child's first stdout line, or None if it ended (or took too long) first."""
    assert process.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    process.stdout.close() if box else None
    if not box or not box[0].strip():
        if process.poll() is None and not box:
            os.killpg(process.pid, signal.SIGTERM)
        return None
    return box[0].decode("utf-8", "replace")


__all__ = ["Child", "StartRefused", "Supervisor"]
