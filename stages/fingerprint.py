"""Fingerprint: a stable hash of chosen columns per row, to detect changed rows between
loads or to key rows that have no natural key. The hash is of a canonical encoding, so it
is the same on every machine, in every run and under every PYTHONHASHSEED, and it does not
change when pandas reads a column as float in one batch and as integer in the next."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import KW_ONLY, dataclass
from decimal import Decimal
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from stages.errors import StageError
from stages._util import as_list, call_repr, is_null, require_columns, shown, split
from stages.base import BaseStage, StageResult

_HASHES: dict[str, Callable[[bytes], Any]] = {"sha256": hashlib.sha256,
                                              "blake2b": hashlib.blake2b}


class Unencodable(TypeError):
    """A value with no canonical encoding (an arbitrary object)."""


def canonical(value: Any) -> Any:
    """`value` as plain JSON data, one form per meaning: every null (None, NaN, NaT, NA) is
    null; a whole float is its integer (1.0 -> 1); other floats keep Python's shortest
    round-trip text; times are ISO 8601 (aware ones in UTC) tagged by kind; bytes are hex;
    lists and dicts are encoded item by item (dict keys as text)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if is_null(value):
        return None
    if isinstance(value, (bool, np.bool_, str)):
        return value if isinstance(value, str) else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isinf(number):
            return {"$float": "inf" if number > 0 else "-inf"}
        return int(number) if number.is_integer() else number
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Unencodable("Decimal")
        if value == value.to_integral_value():
            return int(value)
        return {"$decimal": format(value.normalize(), "f")}
    if isinstance(value, (dt.datetime, np.datetime64)):
        stamp = pd.Timestamp(value)
        if stamp.tz is None:
            return {"$datetime": stamp.isoformat()}
        return {"$timestamp": stamp.tz_convert("UTC").isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, (dt.timedelta, np.timedelta64)):
        return {"$timedelta": pd.Timedelta(value).isoformat()}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    raise Unencodable(type(value).__name__)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False)
_dump = _ENCODER.encode
_text = json.encoder.encode_basestring  # a str as JSON text, as _ENCODER writes it


def canonical_json(row: Mapping[str, Any]) -> str:
    """The text that is hashed: the row's canonical values as compact JSON, keys sorted."""
    return _dump({str(k): canonical(v) for k, v in row.items()})


def _fragment(value: Any) -> str:
    """`_dump(canonical(value))`, with shortcuts for the common plain values."""
    kind = type(value)
    if kind is str:
        return _text(value)
    if kind is int:
        return str(value)
    if kind is float and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)  # repr is JSON's float text
    return _dump(canonical(value))


def _fragments(values: pd.Series) -> tuple[list[str], dict[int, Unencodable]]:
    """Each cell's canonical JSON text, and the rows whose cell has none. Times are costly
    to encode and repeat a lot in a batch: each distinct one is encoded once."""
    cells = values.tolist()
    if pd.api.types.is_datetime64_any_dtype(values):
        memo: dict[Any, str] = {}
        return [memo[v] if v in memo else memo.setdefault(v, _fragment(v)) for v in cells], {}
    out: list[str] = []
    bad: dict[int, Unencodable] = {}
    for row, value in enumerate(cells):
        try:
            out.append(_fragment(value))
        except Unencodable as exc:
            out.append("")
            bad[row] = exc
    return out, bad


@dataclass(frozen=True, repr=False)
class Fingerprint(BaseStage):
    """Add `target` (default "fingerprint"): the hex `algorithm` digest ("sha256", or
    "blake2b" with its full 64-byte digest) of the UTF-8 `canonical_json` of the row's
    `columns`, e.g. {"flight":1545,"sched_dep":{"$timestamp":"2013-01-01T10:15:00+00:00"}}.
    Column order does not matter; names do. A value with no canonical encoding (an
    arbitrary object) rejects its row."""

    columns: str | Sequence[str]
    _: KW_ONLY
    target: str = "fingerprint"
    algorithm: Literal["sha256", "blake2b"] = "sha256"
    name: ClassVar[str] = "fingerprint"

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(as_list(self.columns)))
        if not self.columns:
            raise StageError("Fingerprint: columns must name at least one column")
        if self.algorithm not in _HASHES:
            raise StageError(f"{self!r}: algorithm must be one of {', '.join(_HASHES)}")
        if self.target in self.columns:
            raise StageError(f"{self!r}: target {self.target!r} is one of the hashed columns")

    __repr__ = call_repr

    def apply(self, frame: pd.DataFrame) -> StageResult:
        require_columns(self, frame, self.columns)
        hasher = _HASHES[self.algorithm]
        columns = sorted({str(c): c for c in self.columns}.items())  # as canonical_json orders
        parts: list[list[str]] = []
        reasons = np.full(len(frame), None, dtype=object)
        for name, column in columns:
            texts, bad = _fragments(frame[column])
            head = _dump(name) + ":"
            parts.append([head + text for text in texts])
            for row, exc in bad.items():
                if reasons[row] is None:
                    reasons[row] = (f"fingerprint: column '{name}' value "
                                    f"'{shown(frame[column].iloc[row])}' of type {exc} has no "
                                    f"canonical encoding")
        digests = [hasher(("{" + ",".join(row) + "}").encode("utf-8")).hexdigest()
                   for row in zip(*parts)]
        rejected = np.array([r is not None for r in reasons], dtype=bool)
        kept = frame.assign(**{self.target: pd.Series(pd.array(digests, dtype="string"),
                                                      index=frame.index)})
        return split(kept, rejected, reasons, original=frame, stage=self)

