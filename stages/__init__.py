"""Cleaning stages: small, pure DataFrame -> DataFrame steps that reject bad rows with a
reason instead of losing them."""

from stages.base import REASON_COLUMN, STAGE_COLUMN, CleanResult, Stage, StageResult, run_stages
from stages.columns import DropColumns, Rename, Select, SnakeCaseColumns
from stages.rows import Dedupe, Derive, DropNulls, DropRows, Filter, NotNull
from stages.text import Lower, Trim, Upper
from stages.types import Cast, DeriveTimestamp, ParseTimestamp

__all__ = [
    "Cast", "CleanResult", "Dedupe", "Derive", "DeriveTimestamp", "DropColumns", "DropNulls",
    "DropRows", "Filter", "Lower", "NotNull", "ParseTimestamp", "REASON_COLUMN", "Rename",
    "STAGE_COLUMN", "Select", "SnakeCaseColumns", "Stage", "StageResult", "Trim", "Upper",
    "run_stages",
]
