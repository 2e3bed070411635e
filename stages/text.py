"""Text stages: trim, change case and normalise string columns. They never reject rows;
nulls stay null and the columns become pandas' "string" dtype."""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Literal, Sequence

from etl.core.lazy import LazyModule
from stages.errors import StageError
from stages._util import as_list, require_columns, show
from stages.base import BaseStage, StageResult

pd = LazyModule("pandas")

_SPACES = re.compile(r"\s+")  # Python's Unicode whitespace: tabs, newlines, NBSP, U+3000...


class _TextStage(BaseStage):
    name = "text"
    label = "Text"

    def __init__(self, columns: str | Sequence[str]) -> None:
        self.columns = as_list(columns)

    def __repr__(self) -> str:
        return f"{self.label}(columns={show(self.columns)})"

    def _change(self, values: pd.Series) -> pd.Series:
        raise NotImplementedError

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.columns)
        changed = {c: self._change(frame[c].astype("string")) for c in self.columns}
        return StageResult(kept=frame.assign(**changed))


class Trim(_TextStage):
    """Strip leading and trailing whitespace."""

    name, label = "trim", "Trim"

    def _change(self, values: pd.Series) -> pd.Series:
        return values.str.strip()


class Upper(_TextStage):
    """Upper-case (codes, identifiers)."""

    name, label = "upper", "Upper"

    def _change(self, values: pd.Series) -> pd.Series:
        return values.str.upper()


class Lower(_TextStage):
    """Lower-case."""

    name, label = "lower", "Lower"

    def _change(self, values: pd.Series) -> pd.Series:
        return values.str.lower()


def _each(values: pd.Series, change: Callable[[str], str]) -> pd.Series:
    """`change` applied to every non-null value in Python (not through the string storage's
    own regex engine, whose idea of whitespace differs between backends)."""
    return values.map(change, na_action="ignore").astype("string")


class NormalizeWhitespace(_TextStage):
    """Collapse every run of whitespace (tabs, newlines, non-breaking spaces...) to one space
    and trim the ends: "  New\u00a0\tYork " -> "New York". Text from forms and scraped pages
    otherwise compares unequal to itself."""

    name, label = "normalize_whitespace", "NormalizeWhitespace"

    def _change(self, values: pd.Series) -> pd.Series:
        return _each(values, lambda text: _SPACES.sub(" ", text).strip())


class NormalizeUnicode(_TextStage):
    """Bring text to one Unicode normal form, so that the same visible text is the same
    string: "NFC" (default) joins "e" + combining accent into "é"; "NFKC" also folds
    compatibility forms (full-width "Ａ" -> "A", "ﬁ" -> "fi", superscript "²" -> "2")."""

    name, label = "normalize_unicode", "NormalizeUnicode"
    FORMS = ("NFC", "NFKC", "NFD", "NFKD")

    def __init__(self, columns: str | Sequence[str], *,
                 form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC") -> None:
        super().__init__(columns)
        if form not in self.FORMS:
            raise StageError(f"NormalizeUnicode: form must be one of {', '.join(self.FORMS)}, "
                             f"not {form!r}")
        self.form = form

    def __repr__(self) -> str:
        extra = "" if self.form == "NFC" else f", form={self.form!r}"
        return f"{self.label}(columns={show(self.columns)}{extra})"

    def _change(self, values: pd.Series) -> pd.Series:
        form = self.form
        return _each(values, lambda text: unicodedata.normalize(form, text))
