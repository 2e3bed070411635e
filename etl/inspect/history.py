"""The list of runs, newest first, with what each loaded and how long it took: what `etl runs`
prints and `Inspector.runs` returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from etl.core.statuses import RunStatus
from etl.runtime.runs import totals
from etl.stores.state import RunRecord, StateStore


@dataclass
class RunLine:
    """One run as the runs list shows it. `took_seconds` is from its creation to its last
    status change, None while it runs (it has taken nothing final yet)."""

    run_id: str
    pipeline: str
    plan: str
    status: str
    rows_fetched: int
    rows_loaded: int
    rows_quarantined: int
    started: datetime
    took_seconds: float | None


def run_line(state: StateStore, run: RunRecord) -> RunLine:
    """`run` with the totals of its checkpoints."""
    sums = totals(state.list_checkpoints(run.run_id))
    took = (None if run.status == RunStatus.RUNNING
            else max(0.0, (run.updated_at - run.created_at).total_seconds()))
    return RunLine(run_id=run.run_id, pipeline=run.pipeline, plan=run.plan, status=run.status,
                   rows_fetched=sums["rows_fetched"], rows_loaded=sums["rows_loaded"],
                   rows_quarantined=sums["rows_quarantined"], started=run.created_at,
                   took_seconds=took)


def run_lines(state: StateStore, *, pipeline: str | None = None, limit: int = 20) -> list[RunLine]:
    """The newest `limit` runs (of `pipeline`, when given), newest first."""
    return [run_line(state, run) for run in state.list_runs(pipeline=pipeline, limit=limit)]


def took_text(seconds: float | None) -> str:
    """A duration as a person reads it: 0.8 s, 12.4 s, 3 min 05 s, 2 h 01 min; "-" for none."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


__all__ = ["RunLine", "run_line", "run_lines", "took_text"]
