"""Cleaning stages: small, pure DataFrame -> DataFrame steps that reject bad rows with a
reason instead of losing them."""

from stages.base import CleanResult, Stage, StageResult, run_stages
from stages.columns import DropColumns, Rename, Select, SnakeCaseColumns
from stages.rows import Dedupe, Derive, DropRows, Filter, NotNull
from stages.text import Lower, Trim, Upper
from stages.types import Cast, DeriveTimestamp

__all__ = [
    "Cast", "CleanResult", "Dedupe", "Derive", "DeriveTimestamp", "DropColumns", "DropRows",
    "Filter", "Lower", "NotNull", "Rename", "Select", "SnakeCaseColumns", "Stage",
    "StageResult", "Trim", "Upper", "run_stages",
]
