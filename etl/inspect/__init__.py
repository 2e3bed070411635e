"""Read-only inspection of runs for notebooks and people (`etl.inspect.Inspector`)."""

from __future__ import annotations

from etl.inspect.inspector import LEDGER_STAGES, Inspector, PayloadMismatch, find_project_dir, share_done

__all__ = ["LEDGER_STAGES", "Inspector", "PayloadMismatch", "find_project_dir", "share_done"]
