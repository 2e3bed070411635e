"""Checks of a pipeline before a run (`etl describe --check`): the source gives rows, every
stage finds the columns it names on a sample of them, the key is in the cleaned output, and
the sink can be reached.

Each check says ok or what is wrong in one line, and a failed check does not stop the
others that can still run: a user fixes every problem in one go instead of one per run.
Nothing is written anywhere (the sink is only reached, not written to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from etl.core.errors import USER_ERRORS
from etl.core.extras import missing_extra
from etl.core.urls import mask_url

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


def describe_error(exc: BaseException) -> str:
    """An error as one line: the toolkit's own message as it is, anything else with its
    type; a missing optional package as its `pip install` line; passwords masked."""
    extra = missing_extra(exc)
    if extra is not None and not isinstance(exc, USER_ERRORS):
        text = str(extra)
    elif isinstance(exc, USER_ERRORS):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
    for cut in (", Topology Description:", " (configured timeouts:", " (Background on this error"):
        text = text.split(cut)[0]
    return " ".join(mask_url(text).split())


def sample(pipeline: Any, *, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
    """The source's first `rows` rows, as the stages see them (without the source's own
    bookkeeping columns), read through one shard of the pipeline's plan."""
    from etl.runtime.runs import plan_columns
    from etl.sources.base import SOURCE_COLUMNS

    single = pipeline.with_shards(1)
    plan = single.shards.fit(single.source.sample(plan_columns(single)))
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
    """The sink can be reached: its database answers, its folder can be written, its S3
    bucket is there with the credentials at hand. Nothing is written."""
    try:
        detail = _reach(sink)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the answer
        return Check("sink", FAIL, f"{sink.describe()}: {describe_error(exc)}")
    return Check("sink", OK, f"{sink.describe()}: {detail}")


def _reach(sink: Any) -> str:
    kind = type(sink).__name__
    if kind == "SqlSink":
        from etl.sinks.sql_table import open_engine

        engine = open_engine(sink.url)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
        return "the database answers"
    if kind == "MongoSink":
        from etl.core.mongo_client import connect

        client = sink._client or connect(sink._raw_url, timeout_ms=5000)
        client.admin.command("ping")
        return "the server answers"
    if kind == "DeltaSink" and sink._s3:
        return _bucket(sink.path, sink.options)
    path = getattr(sink, "path", None)
    if kind in ("ParquetSink", "DeltaSink") and path is not None:
        return _writable(Path(str(path).removeprefix("file://")))
    return f"not checked ({kind} has no reachability check)"


def _writable(path: Path) -> str:
    """The folder `path`, or its nearest existing parent, can be written by us."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PermissionError(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {existing}")
    return "the folder is writable" if existing == path.absolute() else \
        f"the folder can be made ({existing} is writable)"


def _bucket(path: str, options: dict[str, str]) -> str:
    """The S3 bucket of `path` answers a HEAD with the credentials delta-rs would use."""
    import boto3

    bucket = path.split("://", 1)[1].split("/", 1)[0]
    client = boto3.client(
        "s3", endpoint_url=options.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=options.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=options.get("AWS_SECRET_ACCESS_KEY"),
        region_name=options.get("AWS_REGION"))
    client.head_bucket(Bucket=bucket)
    return f"bucket {bucket} answers"


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
