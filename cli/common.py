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
from etl.core.urls import mask_secrets
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
    """JSON for --json output: dataclasses and datetimes included, and every string masked
    (mask_url) before it is encoded, so records kept before masking existed show no secret."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
            obj = asdict(obj)
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, datetime):
            return obj.isoformat()
        return mask_secrets(obj)

    return json.dumps(plain(value), default=lambda obj: mask_secrets(str(obj)), indent=2)


def shard_status(checkpoint: Checkpoint) -> str:
    """The status to show: stored status, but "done" once complete."""
    return ShardStatus.DONE if checkpoint.complete else checkpoint.status
