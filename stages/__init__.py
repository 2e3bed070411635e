"""Cleaning stages: small, pure DataFrame -> DataFrame steps that reject bad rows with a
reason instead of losing them.

Names load on first use (PEP 562), so `import stages` costs nothing until a stage is built.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_HOMES = {
    "AllowedValues": "stages.rules",
    "canonical_json": "stages.fingerprint",
    "Cast": "stages.types",
    "CastSchema": "stages.schema",
    "CleanResult": "stages.base",
    "ConvertTimezone": "stages.dates",
    "Dedupe": "stages.rows",
    "Derive": "stages.rows",
    "DeriveTimestamp": "stages.timestamps",
    "DropColumns": "stages.columns",
    "DropNulls": "stages.rows",
    "DropRows": "stages.rows",
    "Explode": "stages.nested",
    "FillNulls": "stages.values",
    "Filter": "stages.rows",
    "Fingerprint": "stages.fingerprint",
    "Flatten": "stages.nested",
    "Lower": "stages.text",
    "MapValues": "stages.values",
    "NormalizeUnicode": "stages.text",
    "NormalizeWhitespace": "stages.text",
    "NotNull": "stages.rows",
    "ParseDate": "stages.dates",
    "ParseNumber": "stages.numbers",
    "ParseTimestamp": "stages.timestamps",
    "Range": "stages.rules",
    "REASON_COLUMN": "stages.base",
    "Regex": "stages.rules",
    "Rename": "stages.columns",
    "Rule": "stages.rules",
    "run_stages": "stages.base",
    "SafeMongoKeys": "stages.mongo",
    "Select": "stages.columns",
    "SnakeCaseColumns": "stages.columns",
    "Stage": "stages.base",
    "STAGE_COLUMN": "stages.base",
    "StageResult": "stages.base",
    "Trim": "stages.text",
    "Unique": "stages.rules",
    "Upper": "stages.text",
    "Validate": "stages.validate",
    "StageError": "stages.errors",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
