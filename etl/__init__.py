"""dramatiq-etl: crash-safe, exactly-once batch ETL pipelines on Dramatiq.

The names a pipeline module needs: Pipeline and RetryPolicy, the file and SQL sources, the sinks.
Stages live in `stages`, shard plans in `shards`.
"""

from etl.pipeline import Pipeline, RetryPolicy
from etl.sinks.files import MongoSink, ParquetSink
from etl.sources.files import FileSource
from etl.sources.sql import SqlSource

__all__ = ["FileSource", "MongoSink", "ParquetSink", "Pipeline", "RetryPolicy", "SqlSource"]
