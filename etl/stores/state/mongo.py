"""MongoDB state store (pymongo), for production and many machines.

No multi-document transactions (they need a replica set): every guarantee comes from
single-document atomic updates done in a crash-safe order.

- record_fetch inserts the RawPayload pointer (a duplicate is ignored), then advances the
  checkpoint with a compare-and-set on batches_fetched.
- complete_stage first counts the batch in the checkpoint, guarded by the batch number not
  yet being in the checkpoint's `<stage>_done` list ($ne and $addToSet in one update), and
  only then writes the TaskDedup entry. A crash between the two leaves a ledger miss: the
  step is redone, its effect is idempotent, and the second count is refused by the guard.
- acquire_lease changes a lease only through filters that say whose it may be ("ours and
  live", "expired", "free"); two workers racing to create it meet the unique task_key index.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from etl.stores.state.base import (
    BATCH_COUNTERS, Checkpoint, ErrorRecord, Fence, Lease, RawPayload, RunRecord,
    masked_error, utcnow,
)
from etl.core.errors import LeaseLost
from etl.core.names import task_fingerprint
from etl.core.statuses import RunStatus, ShardStatus
from etl.stores.state.sqlite import stage_counts
from etl.core.mongo_client import connect, database_of
from etl.core.urls import mask_url

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Checkpoint fields kept for the guard of complete_stage, not part of Checkpoint.
_DONE_LISTS = tuple(f"{stage}_done" for stage in BATCH_COUNTERS)


def _without_done_lists() -> dict[str, int]:
    """A projection leaving out the done lists (a new dict each time: mongomock edits it)."""
    return {name: 0 for name in _DONE_LISTS}


def _utc(value: Any) -> Any:
    """Datetimes read back as tz-aware UTC (a client without tz_aware gives naive ones)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _record(cls: type[T], doc: dict[str, Any] | None) -> T | None:
    """The dataclass `cls` from a stored document, ignoring fields it does not have (_id)."""
    if doc is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: _utc(v) for k, v in doc.items() if k in names})


def _records(cls: type[T], docs: Any) -> list[T]:
    return [r for r in (_record(cls, d) for d in docs) if r is not None]


class MongoStateStore:
    """StateStore on a MongoDB database (collections named as in etl.stores.state.base).

    `mongodb://` and `mongodb+srv://` URLs connect with pymongo; `mongomock://any/dbname`
    uses an in-process mongomock client (tests, notebooks). `client=` injects a client
    (pymongo or mongomock) that the caller keeps owning; `database=` overrides the URL's.
    """

    def __init__(self, url: str, *, client: Any = None, database: str | None = None) -> None:
        self.url = mask_url(url)
        self._owns_client = client is None
        self.client = client if client is not None else connect(url)
        self.db = self.client[database or database_of(url)]
        self.runs = self.db["EtlRun"]
        self.checkpoints = self.db["TaskCheckpoint"]
        self.dedup = self.db["TaskDedup"]
        self.leases = self.db["PendingTasks"]
        self.errors = self.db["TaskErrorLog"]
        self.payloads = self.db["RawPayload"]
        self.quarantined = self.db["QuarantinedRows"]
        self._create_indexes()
        log.debug("state store opened: %s (database %s)", self.url, self.db.name)

    def _create_indexes(self) -> None:
        self.runs.create_index([("run_id", ASCENDING)], unique=True)
        self.runs.create_index([("pipeline", ASCENDING), ("plan", ASCENDING), ("created_at", DESCENDING)])
        self.checkpoints.create_index([("run_id", ASCENDING), ("shard", ASCENDING)], unique=True)
        self.dedup.create_index([("task_fingerprint", ASCENDING)], unique=True)
        self.dedup.create_index([("run_id", ASCENDING)])
        self.leases.create_index([("task_key", ASCENDING)], unique=True)
        self.leases.create_index([("lease_until", ASCENDING)])
        self.errors.create_index([("run_id", ASCENDING), ("at", DESCENDING)])
        self.payloads.create_index([("run_id", ASCENDING), ("shard", ASCENDING), ("batch", ASCENDING)],
                                   unique=True)
        self.quarantined.create_index([("run_id", ASCENDING), ("shard", ASCENDING),
                                       ("batch", ASCENDING)], unique=True)

    def close(self) -> None:
        """Close the client if this store made it; an injected client stays the caller's."""
        if self._owns_client:
            self.client.close()

    # -- runs ----------------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> bool:
        try:
            self.runs.insert_one(dataclasses.asdict(run))
            return True
        except DuplicateKeyError:
            return False

    def get_run(self, run_id: str) -> RunRecord | None:
        return _record(RunRecord, self.runs.find_one({"run_id": run_id}))

    def latest_run(self, pipeline: str, plan: str, *, unfinished: bool = True) -> RunRecord | None:
        query: dict[str, Any] = {"pipeline": pipeline, "plan": plan}
        if unfinished:
            query["status"] = {"$in": [RunStatus.RUNNING, RunStatus.FAILED]}
        found = self._runs_where(query, limit=1)
        return found[0] if found else None

    def list_runs(self, *, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        return self._runs_where({"pipeline": pipeline} if pipeline is not None else {}, limit=limit)

    def _runs_where(self, query: dict[str, Any], *, limit: int) -> list[RunRecord]:
        """Runs matching `query`, newest first (ties: last inserted first)."""
        docs = self.runs.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return _records(RunRecord, docs)

    def set_run_status(self, run_id: str, status: str) -> None:
        self.runs.update_one({"run_id": run_id}, {"$set": {"status": status, "updated_at": utcnow()}})

    # -- checkpoints ---------------------------------------------------------------------
    def init_checkpoints(self, run_id: str, shards: int) -> None:
        for shard in range(shards):
            fresh = dataclasses.asdict(Checkpoint(run_id=run_id, shard=shard))
            fresh.update({name: [] for name in _DONE_LISTS})
            self.checkpoints.update_one({"run_id": run_id, "shard": shard},
                                        {"$setOnInsert": fresh}, upsert=True)

    def get_checkpoint(self, run_id: str, shard: int) -> Checkpoint | None:
        return _record(Checkpoint, self.checkpoints.find_one({"run_id": run_id, "shard": shard},
                                                             _without_done_lists()))

    def list_checkpoints(self, run_id: str | None = None) -> list[Checkpoint]:
        query = {"run_id": run_id} if run_id is not None else {}
        docs = self.checkpoints.find(query, _without_done_lists()).sort(
            [("run_id", ASCENDING), ("shard", ASCENDING)])
        return _records(Checkpoint, docs)

    def _check_fence(self, fence: Fence | None) -> None:
        """Checked just before the write: without a multi-document transaction the two are
        not one atomic step, but every guarded write is a compare-and-set or idempotent, so a
        commit racing a takeover cannot count or load anything twice."""
        if fence is None:
            return
        held = self.leases.find_one({"task_key": fence.task_key, "taken_by": fence.owner,
                                     "token": fence.token, "lease_until": {"$gt": utcnow()}},
                                    {"_id": 1})
        if held is None:
            raise LeaseLost(f"lease {fence.task_key} is no longer held by {fence.owner} "
                            f"(token {fence.token}): not committing")

    def _released(self, fence: Fence | None, release: bool) -> None:
        """After a commit asked to `release`: end the fence's lease (its own write: these
        collections are written without a multi-document transaction)."""
        if fence is not None and release:
            self.release_lease(fence.task_key, fence.owner, fence.token)
            fence.released = True

    def record_fetch(self, payload: RawPayload, *, exhausted: bool,
                     fence: Fence | None = None, release: bool = False,
                     ledger: bool = False) -> bool:
        self._check_fence(fence)
        try:
            self.payloads.insert_one(dataclasses.asdict(payload))
        except DuplicateKeyError:
            pass  # recorded by an earlier attempt: the checkpoint decides below
        result = self.checkpoints.update_one(
            {"run_id": payload.run_id, "shard": payload.shard, "batches_fetched": payload.batch},
            {"$set": {"cursor": payload.cursor_end, "batches_fetched": payload.batch + 1,
                      "fetch_done": exhausted, "updated_at": utcnow()},
             "$inc": {"rows_fetched": int(payload.rows)}})
        if result.modified_count:
            self._settle_status(payload.run_id, payload.shard)
        if ledger:
            self.mark_done(task_fingerprint("fetch", payload.run_id, payload.shard, payload.batch),
                           "fetch", payload.run_id)
        self._released(fence, release)
        return bool(result.modified_count)

    def finish_fetch(self, run_id: str, shard: int, batches: int, *,
                     fence: Fence | None = None, release: bool = False) -> bool:
        self._check_fence(fence)
        result = self.checkpoints.update_one(
            {"run_id": run_id, "shard": shard, "batches_fetched": batches, "fetch_done": False},
            {"$set": {"fetch_done": True, "updated_at": utcnow()}})
        self._settle_status(run_id, shard)
        self._released(fence, release)
        return result.modified_count == 1

    def _settle_status(self, run_id: str, shard: int) -> None:
        """"running" once started, "done" once complete; idempotent, so it also heals a
        status left behind by a crash right after the counting write."""
        where = {"run_id": run_id, "shard": shard}
        self.checkpoints.update_one({**where, "status": ShardStatus.PENDING},
                                    {"$set": {"status": ShardStatus.RUNNING}})
        self.checkpoints.update_one(
            {**where, "fetch_done": True, "status": {"$ne": ShardStatus.DONE},
             "$expr": {"$gte": ["$batches_loaded", "$batches_fetched"]}},
            {"$set": {"status": ShardStatus.DONE}})

    def complete_stage(self, run_id: str, shard: int, batch: int, stage: str,
                       rows: dict[str, int], *, fence: Fence | None = None,
                       release: bool = False, quarantine: bytes | None = None) -> bool:
        self._check_fence(fence)
        counts = stage_counts(stage, rows)
        done = f"{stage}_done"
        if quarantine is not None:  # 0. the rows, before the count that says they are there
            where = {"run_id": run_id, "shard": shard, "batch": batch}
            self.quarantined.replace_one(where, {**where, "data": quarantine}, upsert=True)
        result = self.checkpoints.update_one(  # 1. count, guarded by the batch's absence
            {"run_id": run_id, "shard": shard, done: {"$ne": batch}},
            {"$addToSet": {done: batch}, "$inc": counts, "$set": {"updated_at": utcnow()}})
        self._settle_status(run_id, shard)
        self.mark_done(task_fingerprint(stage, run_id, shard, batch), stage, run_id)  # 2. ledger
        self._released(fence, release)  # 3. the lease, once the effect is counted
        return result.modified_count == 1

    def set_shard_status(self, run_id: str, shard: int, status: str,
                         last_error: str | None = None) -> None:
        changes: dict[str, Any] = {"status": status, "updated_at": utcnow()}
        if last_error is not None:
            changes["last_error"] = mask_url(last_error)
        self.checkpoints.update_one({"run_id": run_id, "shard": shard}, {"$set": changes})

    # -- dedup ledger --------------------------------------------------------------------
    def is_done(self, fingerprint: str) -> bool:
        return self.dedup.find_one({"task_fingerprint": fingerprint}, {"_id": 1}) is not None

    def mark_done(self, fingerprint: str, stage: str, run_id: str | None = None) -> bool:
        try:
            self.dedup.insert_one({"task_fingerprint": fingerprint, "stage": stage,
                                   "run_id": run_id, "done_at": utcnow()})
            return True
        except DuplicateKeyError:
            return False

    def count_done(self, run_id: str | None = None) -> int:
        return int(self.dedup.count_documents({"run_id": run_id} if run_id is not None else {}))

    # -- raw payload pointers ------------------------------------------------------------
    def get_payload(self, run_id: str, shard: int, batch: int) -> RawPayload | None:
        return _record(RawPayload, self.payloads.find_one({"run_id": run_id, "shard": shard, "batch": batch}))

    def list_payloads(self, run_id: str, shard: int | None = None) -> list[RawPayload]:
        query: dict[str, Any] = {"run_id": run_id}
        if shard is not None:
            query["shard"] = shard
        docs = self.payloads.find(query).sort([("shard", ASCENDING), ("batch", ASCENDING)])
        return _records(RawPayload, docs)

    # -- quarantined rows kept with their clean -----------------------------------------
    def get_quarantine(self, run_id: str, shard: int, batch: int) -> bytes | None:
        doc = self.quarantined.find_one({"run_id": run_id, "shard": shard, "batch": batch},
                                        {"data": 1})
        return bytes(doc["data"]) if doc else None

    # -- errors --------------------------------------------------------------------------
    def log_error(self, error: ErrorRecord) -> None:
        self.errors.insert_one(dataclasses.asdict(masked_error(error)))

    def list_errors(self, run_id: str | None = None, *, limit: int = 100) -> list[ErrorRecord]:
        query = {"run_id": run_id} if run_id is not None else {}
        docs = self.errors.find(query).sort([("at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return _records(ErrorRecord, docs)

    # -- leases --------------------------------------------------------------------------
    def acquire_lease(self, task_key: str, owner: str, ttl: float,
                      payload_ref: str | None = None, *,
                      take_from: str | None = None) -> Lease | None:
        now = utcnow()
        claim: dict[str, Any] = {"taken_by": owner, "lease_until": now + timedelta(seconds=ttl),
                                 "heartbeat": now}
        if payload_ref is not None:
            claim["payload_ref"] = payload_ref
        after = ReturnDocument.AFTER
        # Ours and live: extend it, same token.
        doc = self.leases.find_one_and_update(
            {"task_key": task_key, "taken_by": owner, "lease_until": {"$gt": now}},
            {"$set": claim}, return_document=after)
        if doc is None:  # Expired, whoever held it (or held by take_from, proven dead): take
            # it over, counted as a retry.
            taken: dict[str, Any] = {"task_key": task_key, "taken_by": {"$ne": None},
                                     "lease_until": {"$lte": now}}
            if take_from is not None:
                taken = {"task_key": task_key, "$or": [
                    {"taken_by": {"$ne": None}, "lease_until": {"$lte": now}},
                    {"taken_by": take_from}]}
            doc = self.leases.find_one_and_update(
                taken, {"$set": claim, "$inc": {"token": 1, "retry_count": 1}},
                return_document=after)
        if doc is None:  # Free (released, or not there yet): take it, creating it if needed.
            update: dict[str, Any] = {"$set": claim, "$inc": {"token": 1, "retry_count": 0}}
            if payload_ref is None:
                update["$setOnInsert"] = {"payload_ref": None}
            try:
                doc = self.leases.find_one_and_update(
                    {"task_key": task_key, "taken_by": None}, update, upsert=True,
                    return_document=after)
            except DuplicateKeyError:
                return None  # it exists and is held by someone else (or was just created)
        return _record(Lease, doc)

    def renew_lease(self, task_key: str, owner: str, token: int, ttl: float) -> bool:
        now = utcnow()
        result = self.leases.update_one(
            {"task_key": task_key, "taken_by": owner, "token": token, "lease_until": {"$gt": now}},
            {"$set": {"lease_until": now + timedelta(seconds=ttl), "heartbeat": now}})
        return result.matched_count == 1  # a renewal in the same millisecond modifies nothing

    def release_lease(self, task_key: str, owner: str, token: int) -> bool:
        result = self.leases.update_one({"task_key": task_key, "taken_by": owner, "token": token},
                                        {"$set": {"taken_by": None, "lease_until": None}})
        return result.matched_count == 1

    def get_lease(self, task_key: str) -> Lease | None:
        return _record(Lease, self.leases.find_one({"task_key": task_key}))
