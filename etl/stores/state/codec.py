"""Encoding of state values for stores that keep text (SQLite): JSON and UTC times."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_ms(moment: datetime | None) -> int | None:
    """Epoch milliseconds of a tz-aware (or UTC-naive) datetime."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
