"""The stores a run uses, each opened one way from its URL.

- state (`etl.stores.state`): runs, checkpoints, the dedup ledger, leases, errors, payload
  pointers; `sqlite:///path` or `mongodb://...`.
- objects (`etl.stores.objects`): raw, staged and quarantined batches; a path, `file://`
  or `s3://bucket/prefix`.
- results (the `results` package): every task's status lifecycle; `sqlite:///`, `redis://`,
  `mongodb://`. Recording results never stops a run, so a run opens it with
  `required=False` and goes on without it when it does not answer.

The CLI, the runner, workers and the Inspector all open their stores here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from etl.core.errors import ConfigError, EtlError
from etl.core.urls import mask_url

if TYPE_CHECKING:
    from datetime import timedelta

    from etl.core.config import Settings
    from etl.stores.objects import ObjectStore
    from etl.stores.state import StateStore
    from results import ResultStore


def open_state(url: str) -> "StateStore":
    """The state store for `url` (an unknown scheme is one clear error)."""
    from etl.stores.state import open_state as open_

    return open_(url)


def open_objects(url: str, **options: object) -> "ObjectStore":
    """The object store for `url` (an unknown scheme is one clear error); `options` go to
    the store (`endpoint_url=` for S3)."""
    from etl.stores.objects import open_objects as open_

    return open_(url, **options)


def results_ttl(settings: "Settings") -> "timedelta":
    """The `results_ttl` setting (seconds a result record is kept) as a timedelta."""
    from datetime import timedelta

    from etl.core.config import seconds_setting

    return timedelta(seconds=seconds_setting(settings, "results_ttl"))


def results_off(url: str | None) -> bool:
    """Whether `url` switches result recording off (`none`, `off` or empty)."""
    return (url or "").strip().lower() in ("", "none", "off")


def open_results(url: str, *, required: bool = True) -> "ResultStore | None":
    """The result store for `url` (None when `results_off`: nothing is recorded). Not `required` (a run, a worker): a store that does not
    answer is a logged warning and None. Required (a `results` command): an outage is one
    clear error. A malformed URL is an error either way."""
    from results import open_results as open_, open_results_or_none

    if results_off(url):
        if required:
            raise ConfigError("results are not recorded here (results_url is none): set "
                              "ETL_RESULTS_URL to a store to record and show them")
        return None
    if not required:
        return open_results_or_none(url)
    try:
        return open_(url)
    except EtlError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver's connection error is an outage
        raise EtlError(f"cannot open the result store {mask_url(url)}: "
                       f"{type(exc).__name__}: {mask_url(str(exc))}") from exc


@dataclass
class Stores:
    """The stores of one process: state and objects always, results when it could be opened."""

    state: "StateStore"
    objects: "ObjectStore"
    results: "ResultStore | None" = None
    #: Opened from the settings, so any process with the same settings opens the same ones
    #: (a worker may then act for this process: etl.runtime.planning).
    shared: bool = False

    @classmethod
    def from_settings(cls, settings: "Settings", *, results: bool = True) -> "Stores":
        """Open the stores `settings` name; the result store only when `results`, and then
        as a run does (an outage means no recording, not no run)."""
        return cls(state=open_state(settings.state_url),
                   objects=open_objects(settings.objects_url),
                   results=open_results(settings.results_url, required=False) if results else None,
                   shared=True)


__all__ = ["Stores", "open_objects", "open_results", "open_state"]
