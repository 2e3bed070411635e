"""Settings the sender of a run and the workers working it must agree on, and the check that
they do.

`etl worker` reads its settings where it runs (etl.core.config), never from the `etl run`
that sent the work: a worker started without the sender's ETL_OBJECTS_URL, say, writes its
batches somewhere the sender never looks. So a distributed run records, as it is created,
the sender's value of each shared setting as a fingerprint (a short sha256, so no password
is stored) and a masked display value (etl.core.urls.mask_url); a worker compares its own
values with those the first time it works the run, and says which differ (etl.runtime.context).
Runs recorded before this existed carry no fingerprints and are not checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etl.core.config import Settings
from etl.core.urls import mask_url

#: Settings a worker reads from its own environment and files, never from the `etl run` that
#: sent the work: sender and workers must agree on them. The reason is shown by `etl config`.
SHARED_WITH_WORKERS = {
    "broker_url": "the broker they take work from",
    "queue": "the queue they consume",
    "state_url": "checkpoints, dedup ledger and leases",
    "objects_url": "raw and staged batches",
    "results_url": "task records",
    "s3_endpoint_url": "where s3:// objects are",
    "lease_ttl": "how long a silent worker's lease lives",
    "results_ttl": "how long task records are kept",
    "demo_output": "where the demo pipeline writes (in the worker)",
}

#: The run parameter holding the sender's shared settings: {name: {"hash", "shown"}}.
SHARED_PARAM = "shared_settings"


def fingerprint(name: str, value: str) -> str:
    """A short hash of a setting's value: equal values match, the value is not kept."""
    return hashlib.sha256(f"{name}={value}".encode()).hexdigest()[:16]


def shown(value: str) -> str:
    """A setting's value as a log line may show it: passwords masked, empty said so."""
    return mask_url(value) if value else "(empty)"


def recorded_settings(settings: Settings) -> dict[str, dict[str, str]]:
    """The sender's shared settings as a run records them (SHARED_PARAM)."""
    return {name: {"hash": fingerprint(name, getattr(settings, name)),
                   "shown": shown(getattr(settings, name))}
            for name in SHARED_WITH_WORKERS}


@dataclass(frozen=True)
class Mismatch:
    """A shared setting whose value here differs from the sender's (both masked)."""

    name: str
    sent: str
    here: str


def mismatches(params: Mapping[str, Any], settings: Settings, *,
               skip: frozenset[str] = frozenset()) -> list[Mismatch]:
    """The shared settings (but `skip`) whose value in `settings` differs from the one a run
    recorded in its `params`; none when the run recorded none (a run older than the check)."""
    recorded = params.get(SHARED_PARAM)
    if not isinstance(recorded, Mapping):
        return []
    found = []
    for name in SHARED_WITH_WORKERS:
        entry = recorded.get(name)
        if name in skip or not isinstance(entry, Mapping) or "hash" not in entry:
            continue
        value = getattr(settings, name)
        if entry["hash"] != fingerprint(name, value):
            found.append(Mismatch(name, str(entry.get("shown", "?")), shown(value)))
    return found


__all__ = ["SHARED_PARAM", "SHARED_WITH_WORKERS", "Mismatch", "fingerprint", "mismatches",
           "recorded_settings", "shown"]
