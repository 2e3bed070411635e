"""SafeMongoKeys: column names, and the keys of dicts nested in cells, made safe to load into
MongoDB, where "$" starts an operator, "." is a path into a document and NUL ends a string.
The renaming depends only on the set of names, never on their order, so the same payload
gives the same document however an API ordered its keys."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import call_repr
from stages.base import BaseStage, StageResult

_UNSAFE = ("$", ".", "\x00")
_LISTS = (list, tuple, np.ndarray)


def safe_key(key: Any, replacement: str = "_") -> str:
    """`key` as text with "$", "." and NUL replaced; "" becomes `replacement`."""
    text = str(key)
    for char in _UNSAFE:
        text = text.replace(char, replacement)
    return text or replacement


def safe_names(keys: Sequence[Any], replacement: str = "_") -> list[str]:
    """Safe, distinct names for `keys`, position by position. A key that is already safe
    keeps its name; a renamed (or repeated) key that collides gets a suffix "_2", "_3"...
    handed out in the sorted order of the original keys ({"a.b", "a$b", "a_b"} -> "a_b_3",
    "a_b_2", "a_b" whatever order they come in)."""
    names = [safe_key(k, replacement) for k in keys]
    order = sorted(range(len(keys)), key=lambda i: (str(keys[i]), type(keys[i]).__name__, i))
    result = [""] * len(keys)
    used: set[str] = set()
    pending: list[int] = []
    for i in order:  # safe keys first: they keep their names
        if str(keys[i]) == names[i] and names[i] not in used:
            used.add(names[i])
            result[i] = names[i]
        else:
            pending.append(i)
    for i in pending:
        candidate, n = names[i], 2
        while candidate in used:
            candidate, n = f"{names[i]}{replacement}{n}", n + 1
        used.add(candidate)
        result[i] = candidate
    return result


def _nests(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, _LISTS) and any(map(_nests, value)))


@dataclass(frozen=True, repr=False)
class SafeMongoKeys(BaseStage):
    """Rename columns, and (with `nested=True`) the keys of dicts inside cells at any depth,
    so MongoDB accepts them: "$", "." and NUL become `replacement`, other keys are kept,
    non-text keys become text, and names that would then collide are told apart by a
    suffix (see `safe_names`). Run it last, before a MongoSink; name the sink's key by its
    safe name. Rows are never rejected; cells are copied, never changed in place."""

    _: KW_ONLY
    replacement: str = "_"
    nested: bool = True
    name: ClassVar[str] = "safe_mongo_keys"

    def __post_init__(self) -> None:
        if not self.replacement or any(c in self.replacement for c in _UNSAFE):
            raise StageError(f"{self!r}: replacement must be non-empty text without "
                             f"'$', '.' or NUL")

    __repr__ = call_repr

    def _safe(self, value: Any) -> Any:
        if isinstance(value, dict):
            keys = list(value)
            return {name: self._safe(value[key])
                    for key, name in zip(keys, safe_names(keys, self.replacement))}
        if isinstance(value, _LISTS) and _nests(value):
            return [self._safe(v) for v in value]
        return value

    def apply(self, frame: pd.DataFrame) -> StageResult:
        names = safe_names(list(frame.columns), self.replacement)
        out = frame if names == list(frame.columns) else frame.set_axis(names, axis=1)
        if not self.nested:
            return StageResult(kept=out)
        changed: dict[int, pd.Series] = {}
        for position in range(out.shape[1]):
            values = out.iloc[:, position]
            if values.dtype == object and any(map(_nests, values.array)):
                changed[position] = pd.Series([self._safe(v) for v in values.array],
                                              index=values.index, dtype=object, name=values.name)
        if changed:
            out = out.copy(deep=False)
            for position, values in changed.items():
                out.isetitem(position, values)
        return StageResult(kept=out)
