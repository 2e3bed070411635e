"""The one clock of the stores: now, timezone-aware UTC, truncated to milliseconds (what
MongoDB and Redis keep), so a time written and read back compares equal."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, timezone-aware UTC, truncated to milliseconds."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)
