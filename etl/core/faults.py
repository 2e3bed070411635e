"""Crash points for chaos tests: kill this process with SIGKILL at a named point.

Set ETL_CRASH_AT="point:N" (or several, comma separated) and the process kills itself, with
a real SIGKILL and no clean-up, the N-th time it passes `point`. Points sit between the
writes of a batch step, where a crash is hardest to survive:

  run.after_create     run record created, its shards' checkpoints not yet
  fetch.after_put      raw object written, RawPayload not yet recorded
  fetch.after_record   RawPayload recorded, next batch not yet sent
  clean.after_stage    staged object written, clean not yet counted
  sink.before_commit   a sink's rows prepared (staged, files written), not yet committed
  sink.mid_transaction a SQL sink's rows inserted in its open transaction, ledger row and
                       COMMIT not yet
  load.after_sink      sink written, load not yet counted
  load.after_count     load counted, run not yet finalised
  replay.after_sink    a replayed batch written to the sink, its load not yet counted

ETL_CRASH_AT is the `crash_at` setting (etl.core.config), taken from the environment only
and read once, at import: a forked child keeps its parent's plan, a worker process started
with ETL_CRASH_AT in its environment reads it. Unset (the normal case), `crash_point` is a
dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

from etl.core.config import environment_setting

POINTS = ("run.after_create", "fetch.after_put", "fetch.after_record", "clean.after_stage",
          "sink.before_commit", "sink.mid_transaction", "load.after_sink", "load.after_count",
          "replay.after_sink")


def _parse(spec: str) -> dict[str, int]:
    plan: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, count = item.partition(":")
        if point not in POINTS:
            raise ValueError(f"ETL_CRASH_AT: unknown point {point!r}; known: {', '.join(POINTS)}")
        plan[point] = int(count or 1)
    return plan


_PLAN = _parse(environment_setting("crash_at"))
_SEEN: Counter[str] = Counter()
_LOCK = threading.Lock()


def crash_point(point: str) -> None:
    """Die here, by SIGKILL, if ETL_CRASH_AT asks for this point and count."""
    if not _PLAN or point not in _PLAN:
        return
    with _LOCK:
        _SEEN[point] += 1
        if _SEEN[point] == _PLAN[point]:
            os.kill(os.getpid(), signal.SIGKILL)
