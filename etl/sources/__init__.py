"""Sources: where rows come from (etl.sources.base says what a source is and may do).

A new source is one module in this package plus one line in `_EXPORTS`. The names are
exported lazily (PEP 562): importing the package does not import pandas, pyarrow or
SQLAlchemy until a source class is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etl.core.lazy import lazy_exports

if TYPE_CHECKING:
    from etl.sources.base import (SOURCE_ERROR_COLUMN, Batch, PlanChecked, Recuttable,
                                  SchemaKinds, Source,
                                  WholeTable, Windowed)
    from etl.sources.files import FileSource
    from etl.sources.sql import SqlSource
    from etl.sources.windows import Window

#: Public name -> the module that defines it.
_EXPORTS = {
    "SOURCE_ERROR_COLUMN": "etl.sources.base",
    "Batch": "etl.sources.base",
    "Source": "etl.sources.base",
    "Windowed": "etl.sources.base",
    "PlanChecked": "etl.sources.base",
    "Recuttable": "etl.sources.base",
    "SchemaKinds": "etl.sources.base",
    "WholeTable": "etl.sources.base",
    "Window": "etl.sources.windows",
    "FileSource": "etl.sources.files",
    "SqlSource": "etl.sources.sql",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
