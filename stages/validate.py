"""Validate: rows checked against several rules at once. A failing row goes to quarantine
with every rule it broke, each naming the rule, the column and the offending value; it never
reaches the output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import call_repr, split
from stages.base import BaseStage, StageResult
from stages.rules import Rule


@dataclass(frozen=True, repr=False)
class Validate(BaseStage):
    """Check every row against `rules` (Range, AllowedValues, Regex, NotNull, Unique, or
    any object with `check(frame)`); rows failing any rule are rejected with every failure,
    joined by "; " in rule order."""

    rules: Sequence[Rule]
    name: ClassVar[str] = "validate"
    _positional: ClassVar[tuple[str, ...]] = ("rules",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        wrong = [r for r in self.rules if not callable(getattr(r, "check", None))]
        if not self.rules or wrong:
            raise StageError(f"Validate: rules must be a non-empty list of rules (Range, "
                             f"AllowedValues, Regex, NotNull, Unique); got {wrong or 'none'}")

    __repr__ = call_repr

    def apply(self, frame: pd.DataFrame) -> StageResult:
        failures = [rule.check(frame) for rule in self.rules]
        reasons = np.full(len(frame), None, dtype=object)
        for row in range(len(frame)):
            found = [f[row] for f in failures if f[row] is not None]
            if found:
                reasons[row] = "; ".join(found)
        return split(frame, reasons != None, reasons, stage=self)  # noqa: E711 - elementwise
