"""A run's result read as soon as the run is completed is the final one: the server waits for
its own child to write the outcome (keys checked, run timed) before answering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from etl.serve.supervisor import Child, Supervisor

# A child that is still closing down its run: it writes its outcome after a pause.
_LATE_WRITER = """
import json, sys, time
from pathlib import Path
time.sleep(1.0)
folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
(folder / ".r1.tmp").write_text(json.dumps({"run_id": "r1", "keys_repeated": 0}))
(folder / ".r1.tmp").replace(folder / "r1.json")
"""


def _supervisor(root: Path) -> Supervisor:
    return Supervisor(root, distributed=False, run_status=lambda run_id: "completed")


def test_the_outcome_of_a_child_still_closing_down_is_waited_for(tmp_path: Path) -> None:
    # Given a run marked completed whose child has not yet written its outcome
    supervisor = _supervisor(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", _LATE_WRITER, str(supervisor.outcomes)])
    child = Child("pkg:pipeline", "r1", process.pid, str(tmp_path / "log"), False,
                  process=process)
    supervisor._children["r1"] = child
    try:
        # When the outcome is asked for at once
        outcome = supervisor.outcome("r1")
    finally:
        process.kill()
        process.wait()
    # Then it is the child's final word, not the empty answer of a moment earlier
    assert outcome == {"run_id": "r1", "keys_repeated": 0}


def test_a_run_no_child_of_this_server_worked_has_no_outcome(tmp_path: Path) -> None:
    # Given a server that never started run r2 (a run of `etl run`, or of another host)
    supervisor = _supervisor(tmp_path)
    # When its outcome is asked for
    # Then there is none, and nothing is waited for
    assert supervisor.outcome("r2") is None


def test_a_written_outcome_is_read_back(tmp_path: Path) -> None:
    # Given an outcome a child wrote before this server started
    supervisor = _supervisor(tmp_path)
    supervisor.outcomes.mkdir(parents=True)
    (supervisor.outcomes / "r3.json").write_text(json.dumps({"elapsed": 1.5}))
    # When it is asked for
    # Then it is what the child wrote
    assert supervisor.outcome("r3") == {"elapsed": 1.5}
