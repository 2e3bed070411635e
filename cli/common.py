"""Shared pieces of the CLI: settings, stores, consoles and small renderers."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console

from etl.core.config import Settings, load_settings
from etl.core.statuses import ShardStatus
from etl.stores import open_objects, open_results, open_state
from etl.stores.objects import ObjectStore
from etl.stores.state import Checkpoint, StateStore
from etl.runtime.runs import totals  # noqa: F401 - the CLI commands take it from here

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
    return open_results(conf.results_url, required=required)


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
    return ShardStatus.DONE if checkpoint.complete else checkpoint.status
