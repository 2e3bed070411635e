"""Sinks: where cleaned batches end (etl.sinks.base says what a sink is and may do).

A new sink is one module in this package plus one line in `_EXPORTS`. The names are
exported lazily (PEP 562): importing the package does not import pandas, pyarrow or pymongo
until a sink class is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etl.core.lazy import lazy_exports

if TYPE_CHECKING:
    from etl.sinks.base import BackfillAware, ParquetWriter, Reachable, Sequenced, Sink
    from etl.sinks.delta import DeltaSink
    from etl.sinks.mongo import MongoSink
    from etl.sinks.parquet import ParquetSink
    from etl.sinks.sql import SqlSink

#: Public name -> the module that defines it.
_EXPORTS = {
    "Sink": "etl.sinks.base",
    "BackfillAware": "etl.sinks.base",
    "ParquetWriter": "etl.sinks.base",
    "Reachable": "etl.sinks.base",
    "Sequenced": "etl.sinks.base",
    "SEQ_COLUMN": "etl.sinks.base",
    "DeltaSink": "etl.sinks.delta",
    "SqlSink": "etl.sinks.sql",
    "ParquetSink": "etl.sinks.parquet",
    "MongoSink": "etl.sinks.mongo",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
