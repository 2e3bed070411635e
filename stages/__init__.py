"""Cleaning stages: small, pure DataFrame -> DataFrame steps that reject bad rows with a
reason instead of losing them."""

from stages.base import REASON_COLUMN, STAGE_COLUMN, CleanResult, Stage, StageResult, run_stages
from stages.columns import DropColumns, Rename, Select, SnakeCaseColumns
from stages.dates import ConvertTimezone, ParseDate
from stages.fingerprint import Fingerprint, canonical_json
from stages.mongo import SafeMongoKeys
from stages.nested import Explode, Flatten
from stages.numbers import ParseNumber
from stages.rows import Dedupe, Derive, DropNulls, DropRows, Filter, NotNull
from stages.rules import AllowedValues, Range, Regex, Rule, Unique
from stages.schema import CastSchema
from stages.text import Lower, NormalizeUnicode, NormalizeWhitespace, Trim, Upper
from stages.timestamps import DeriveTimestamp, ParseTimestamp
from stages.types import Cast
from stages.validate import Validate
from stages.values import FillNulls, MapValues

__all__ = [
    "AllowedValues", "Cast", "CastSchema", "CleanResult", "ConvertTimezone", "Dedupe", "Derive",
    "DeriveTimestamp", "DropColumns", "DropNulls", "DropRows", "Explode", "FillNulls", "Filter",
    "Fingerprint", "Flatten", "Lower", "MapValues", "NormalizeUnicode", "NormalizeWhitespace",
    "NotNull", "ParseDate", "ParseNumber", "ParseTimestamp", "REASON_COLUMN", "Range", "Regex",
    "Rename", "Rule", "STAGE_COLUMN", "SafeMongoKeys", "Select", "SnakeCaseColumns", "Stage",
    "StageResult", "Trim", "Unique", "Upper", "Validate", "canonical_json", "run_stages",
]
