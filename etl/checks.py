"""Checks of a pipeline before a run (`etl describe --check`): the source gives rows, every
stage finds the columns it names on a sample of them, the key is in the cleaned output, and
the sink can be reached.

Each check says ok or what is wrong in one line, and a failed check does not stop the
others that can still run: a user fixes every problem in one go instead of one per run.
Nothing is written anywhere (the sink is only reached, not written to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from etl.core.error_lines import describe_error
from etl.sinks.base import Reachable

#: Rows of the source the stages are tried on.
SAMPLE_ROWS = 1000


#: A check's outcome: passed, failed, or not run (what it needs failed before it).
OK, FAIL, SKIPPED = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    """One check of a pipeline: what was checked, its outcome, and what was found."""

    name: str  # source, stages, key or sink
    state: str  # OK, FAIL or SKIPPED
    detail: str

    @property
    def failed(self) -> bool:
        return self.state == FAIL


def sample(pipeline: Any, *, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
    """The source's first `rows` rows, as the stages see them (without the source's own
    bookkeeping columns), read through one shard of the pipeline's plan."""
    from etl.runtime.runs import fit_plan
    from etl.sources.base import SOURCE_COLUMNS

    single = pipeline.with_shards(1)
    plan = fit_plan(single)
    single.source.prepare(plan)
    frame = single.source.read_batch(plan, 0, after=None, limit=rows).frame
    return frame.drop(columns=[c for c in SOURCE_COLUMNS if c in frame.columns])


def check_stages(frame: pd.DataFrame, stages: Any) -> tuple[Check, pd.DataFrame | None]:
    """Run the stages one by one on `frame`: a stage that names a column the rows do not
    have (or fails otherwise) is named with its position; the cleaned rows, or None."""
    rejected = 0
    for position, stage in enumerate(stages, start=1):
        try:
            result = stage.apply(frame)
        except Exception as exc:  # noqa: BLE001 - any failure of a stage is what we report
            text = describe_error(exc)
            named = text if repr(stage) in text else f"{stage!r}: {text}"
            return Check("stages", FAIL, f"stage {position} {named}"), None
        frame = result.kept
        rejected += 0 if result.rejected is None else len(result.rejected)
    return Check("stages", OK, f"{len(stages)} stage(s) ran on the sample: {len(frame):,} "
                                 f"rows clean, {rejected:,} rejected"), frame


def check_key(pipeline: Any, raw: pd.DataFrame, cleaned: pd.DataFrame) -> Check:
    """The pipeline's key columns are in the cleaned output."""
    from etl.runtime.keys import missing_key

    problem = missing_key(pipeline.key, pipeline.stages, raw, list(cleaned.columns))
    if problem:
        return Check("key", FAIL, problem)
    return Check("key", OK, f"{', '.join(pipeline.key)} in the cleaned output")


def check_sink(sink: Any) -> Check:
    """The sink can be reached, when it is Reachable (etl.sinks.base): its database answers,
    its folder can be written, its S3 bucket is there with the credentials at hand. Nothing
    is written."""
    if not isinstance(sink, Reachable):
        return Check("sink", OK, f"{sink.describe()}: not checked ({type(sink).__name__} has "
                                 "no reachability check)")
    try:
        detail = sink.reach()
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the answer
        return Check("sink", FAIL, f"{sink.describe()}: {describe_error(exc)}")
    return Check("sink", OK, f"{sink.describe()}: {detail}")


def check_pipeline(pipeline: Any, *, rows: int = SAMPLE_ROWS) -> list[Check]:
    """Every check of `pipeline`, in order: source, stages, key, sink. The stages and the
    key need the source's sample (the key also the stages' output) and are SKIPPED without
    it."""
    checks: list[Check] = []
    try:
        raw = sample(pipeline, rows=rows)
    except Exception as exc:  # noqa: BLE001 - an unreadable source is the answer
        checks.append(Check("source", FAIL, f"{pipeline.source.describe()}: "
                                            f"{describe_error(exc)}"))
        checks.append(Check("stages", SKIPPED, "not checked: the source gave no rows"))
        checks.append(Check("key", SKIPPED, "not checked: the source gave no rows"))
    else:
        columns = ", ".join(map(str, raw.columns))
        checks.append(Check("source", OK, f"{len(raw):,} rows read; columns: {columns}"))
        stages, cleaned = check_stages(raw, pipeline.stages)
        checks.append(stages)
        checks.append(check_key(pipeline, raw, cleaned) if cleaned is not None else
                      Check("key", SKIPPED, "not checked: a stage failed on the sample"))
    checks.append(check_sink(pipeline.sink))
    return checks


__all__ = ["Check", "FAIL", "OK", "SAMPLE_ROWS", "SKIPPED", "check_key", "check_pipeline", "check_sink", "check_stages",
           "describe_error", "sample"]
