"""The process a server starts for one run: `python -m etl.serve.child '<json>'`.

It calls the runner (`etl.run`) with the request's options, says on stdout, in one JSON
line, which run it opened (or why it could not), then works the run to its end (embedded
broker) or returns once the work is enqueued (RabbitMQ / Redis). Its own session, so a
server that stops or restarts does not take the run down with it; the server reads its
progress from the state store like anyone else, and its outcome from a file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Exit statuses: as the CLI's (etl.serve.supervisor reads them).
EXIT_INCOMPLETE, EXIT_USER, EXIT_SERVICE = 1, 2, 3


def _say(line: dict[str, Any]) -> None:
    """The one line to the server; afterwards stdout goes where stderr goes (the log), so
    a server that stopped reading cannot block or break the run."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    outcome_dir = Path(request.pop("outcome_dir"))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the project's own pipeline modules, as `etl run`
    from etl.core.errors import USER_ERRORS, ServiceUnreachable
    from etl.core.logs import setup_logging
    from etl.core.urls import mask_url
    from etl.runner import RunStart, run

    setup_logging(verbose=1)
    said = False

    def on_start(start: RunStart) -> None:
        nonlocal said
        _say({"run_id": start.run.run_id, "opened": start.opened,
              "distributed": start.distributed})
        said = True

    window = request.pop("window", None)
    try:
        outcome = run(request.pop("spec"), window=window, on_start=on_start, **request)
    except ServiceUnreachable as exc:  # a source or sink that refuses us: not the caller's mistake
        return _failed(said, "service", mask_url(str(exc)), EXIT_SERVICE)
    except USER_ERRORS as exc:
        return _failed(said, "user", mask_url(str(exc)), EXIT_USER)
    except Exception as exc:  # noqa: BLE001 - one line for the server, the traceback in the log
        from cli.main import service_errors

        log.exception("the run failed")
        kind, code = (("service", EXIT_SERVICE) if isinstance(exc, service_errors())
                      else ("internal", EXIT_INCOMPLETE))
        return _failed(said, kind, mask_url(f"{type(exc).__name__}: {exc}"), code)
    outcome_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": outcome.run_id, "completed": outcome.completed,
              "enqueued": outcome.enqueued, "elapsed": outcome.elapsed,
              "rows_per_second": outcome.rows_per_second, "drifted": outcome.drifted,
              "dead_letters": outcome.dead_letters, "keys_repeated": outcome.keys_repeated,
              "loaded_now": outcome.loaded_now, "rows_added": outcome.rows_added,
              "totals": outcome.after}
    temporary = outcome_dir / f".{outcome.run_id}.json.tmp"
    temporary.write_text(json.dumps(record), encoding="utf-8")
    temporary.replace(outcome_dir / f"{outcome.run_id}.json")
    return 0 if outcome.completed or outcome.enqueued else EXIT_INCOMPLETE


def _failed(said: bool, kind: str, message: str, code: int) -> int:
    if not said:
        _say({"error": message, "kind": kind})
    else:
        log.error("%s", message)
    return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as cli.main.entry: Arrow's thread pools may abort the interpreter's teardown
