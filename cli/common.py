"""Shared pieces of the CLI: settings, stores, consoles and small renderers."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console

from etl.core.config import Settings, load_settings
from etl.core.errors import EtlError
from etl.core.urls import mask_url
from etl.stores.objects import ObjectStore, open_objects
from etl.stores.state import Checkpoint, StateStore, open_state

if TYPE_CHECKING:
    from results import ResultStore

#: Tables and summaries go to stdout; progress and notices to stderr. Piped output gets a
#: wide console so URLs and run ids are not wrapped mid-word for the next program.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def settings() -> Settings:
    return load_settings()


def state_store(conf: Settings) -> StateStore:
    return open_state(conf.state_url)


def object_store(conf: Settings) -> ObjectStore:
    return open_objects(conf.objects_url)


def result_store(conf: Settings, *, required: bool = True) -> "ResultStore | None":
    """The result store; when not `required` (a run), a store that cannot be opened is a
    logged warning and the run goes on without recording results."""
    from results import open_results, open_results_or_none

    if not required:
        return open_results_or_none(conf.results_url)
    try:
        return open_results(conf.results_url)
    except EtlError:
        raise
    except Exception as exc:  # noqa: BLE001 - an outage
        raise EtlError(f"cannot open the result store {mask_url(conf.results_url)}: "
                       f"{mask_url(str(exc))}") from exc


def to_json(value: Any) -> str:
    """JSON for --json output: dataclasses and datetimes included."""

    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        if hasattr(obj, "__dataclass_fields__"):
            return asdict(obj)
        return str(obj)

    return json.dumps(value, default=default, indent=2)


def shard_status(checkpoint: Checkpoint) -> str:
    """The status to show: stored status, but "done" once complete."""
    return "done" if checkpoint.complete else checkpoint.status


def totals(checkpoints: list[Checkpoint]) -> dict[str, int]:
    """Sums over shards of every counter, plus shards done and failed."""
    keys = ("rows_fetched", "rows_cleaned", "rows_quarantined", "rows_loaded",
            "batches_fetched", "batches_cleaned", "batches_loaded")
    result = {key: sum(getattr(c, key) for c in checkpoints) for key in keys}
    result["shards"] = len(checkpoints)
    result["shards_done"] = sum(c.complete for c in checkpoints)
    result["shards_failed"] = sum(c.status == "failed" and not c.complete for c in checkpoints)
    return result
