"""dramatiq-etl: crash-safe, exactly-once batch ETL pipelines on Dramatiq.

The names a pipeline module needs: Pipeline and RetryPolicy, the file and SQL sources, the
sinks; and the runner, `etl.run(pipeline, ...) -> RunOutcome`, to run one from Python, with
`etl.cancel(run_id)` and `etl.purge(run_id)` to stop one.
Stages live in `stages`, shard plans in `shards`. The names are imported lazily (PEP 562), so
`import etl` (or any etl.core module) does not import pandas, pyarrow or a database driver
until one of them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etl.core.lazy import lazy_exports

if TYPE_CHECKING:
    from etl.pipeline import Pipeline, RetryPolicy
    from etl.runner import RunOutcome, cancel, purge, replay, run
    from etl.sinks.delta import DeltaSink
    from etl.sinks.mongo import MongoSink
    from etl.sinks.parquet import ParquetSink
    from etl.sources.files import FileSource
    from etl.sinks.sql import SqlSink
    from etl.sources.sql import SqlSource

#: Public name -> the module that defines it.
_EXPORTS = {
    "Pipeline": "etl.pipeline",
    "RetryPolicy": "etl.pipeline",
    "FileSource": "etl.sources.files",
    "SqlSource": "etl.sources.sql",
    "ParquetSink": "etl.sinks.parquet",
    "MongoSink": "etl.sinks.mongo",
    "DeltaSink": "etl.sinks.delta",
    "SqlSink": "etl.sinks.sql",
    "run": "etl.runner",
    "cancel": "etl.runner",
    "purge": "etl.runner",
    "replay": "etl.runner",
    "RunOutcome": "etl.runner",
}

__all__ = ["DeltaSink", "FileSource", "MongoSink", "ParquetSink", "Pipeline", "RetryPolicy",
           "RunOutcome", "SqlSink", "SqlSource", "cancel", "purge", "replay", "run"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
