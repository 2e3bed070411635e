"""A result store's health: one round trip through it (write, read, delete a probe record)
and how long each step took, for `etl results health`."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from results.base import ResultStore
from results.errors import JobNotFound
from results.models import JobResult


def check(store: ResultStore) -> dict[str, Any]:
    """Write a probe record (living a minute), read it back, delete it; their latencies in
    milliseconds and the round trip's. JobNotFound if the probe did not read back; a store
    that does not answer raises its driver's error."""
    probe = JobResult(job_id=f"etl-health-{uuid.uuid4().hex}", function="etl.health",
                      queue="etl-health")
    took: dict[str, float] = {}
    started = time.perf_counter()
    store.store(probe, ttl=timedelta(minutes=1))
    took["write_ms"] = (time.perf_counter() - started) * 1000
    mark = time.perf_counter()
    if store.get(probe.job_id) is None:
        raise JobNotFound(probe.job_id)
    took["read_ms"] = (time.perf_counter() - mark) * 1000
    mark = time.perf_counter()
    store.delete(probe.job_id)
    took["delete_ms"] = (time.perf_counter() - mark) * 1000
    took["round_trip_ms"] = (time.perf_counter() - started) * 1000
    return {"ok": True, "store": store.url, **{k: round(v, 3) for k, v in took.items()}}
