"""MongoDB state store (pymongo), for production and many machines.

No multi-document transactions (they need a replica set): every guarantee comes from
single-document atomic updates done in a crash-safe order. record_fetch inserts the
RawPayload pointer, then advances the checkpoint with a compare-and-set on batches_fetched.
complete_stage first counts the batch in the checkpoint, guarded by the batch number not yet
being in the checkpoint's `<stage>_done` set ($ne / $addToSet in one update), and only then
writes the TaskDedup entry: a crash between the two leaves a ledger miss, so the step is
redone, and the second count is refused by the guard.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from etl.state.base import (
    BATCH_COUNTERS, ROW_COUNTERS, Checkpoint, ErrorRecord, Lease, RawPayload, RunRecord,
    task_fingerprint, utcnow,
)
from etl.urls import mask_url

_CHECKPOINT_FIELDS = {f.name for f in dataclasses.fields(Checkpoint)}


def _utc(value: Any) -> Any:
    """Datetimes read back from MongoDB as tz-aware UTC (mongomock and tz_aware=False give
    naive ones)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _doc(cls: type, doc: dict[str, Any] | None) -> Any:
    if doc is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _utc(v) for k, v in doc.items() if k in names})


def _database_of(url: str) -> str:
    rest = url.split("://", 1)[1] if "://" in url else ""
    path = rest.split("/", 1)[1] if "/" in rest else ""
    return path.split("?", 1)[0] or "etl"


class MongoStateStore:
    """StateStore on a MongoDB database (collections named as in PRODUCT.md)."""

    def __init__(self, url: str, *, client: Any = None, database: str | None = None) -> None:
        self.url = mask_url(url)
        if client is None:
            if url.startswith("mongomock://"):
                import mongomock

                client = mongomock.MongoClient(tz_aware=True)
            else:
                import pymongo

                client = pymongo.MongoClient(url, tz_aware=True, serverSelectionTimeoutMS=10_000)
        self.client = client
        self.db = client[database or _database_of(url)]
        self.runs = self.db["EtlRun"]
        self.checkpoints = self.db["TaskCheckpoint"]
        self.dedup = self.db["TaskDedup"]
        self.leases = self.db["PendingTasks"]
        self.errors = self.db["TaskErrorLog"]
        self.payloads = self.db["RawPayload"]
        self._create_indexes()

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

    def close(self) -> None:
        self.client.close()

    # -- runs --------------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> bool:
        try:
            self.runs.insert_one(dataclasses.asdict(run))
            return True
        except DuplicateKeyError:
            return False

    def get_run(self, run_id: str) -> RunRecord | None:
        return _doc(RunRecord, self.runs.find_one({"run_id": run_id}))

    def latest_run(self, pipeline: str, plan: str, *, unfinished: bool = True) -> RunRecord | None:
        query: dict[str, Any] = {"pipeline": pipeline, "plan": plan}
        if unfinished:
            query["status"] = {"$ne": "completed"}
        found = list(self.runs.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).limit(1))
        return _doc(RunRecord, found[0]) if found else None

    def list_runs(self, *, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        query = {"pipeline": pipeline} if pipeline else {}
        cursor = self.runs.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return [_doc(RunRecord, d) for d in cursor]

    def set_run_status(self, run_id: str, status: str) -> None:
        self.runs.update_one({"run_id": run_id}, {"$set": {"status": status, "updated_at": utcnow()}})

    # -- checkpoints -------------------------------------------------------------------
    def init_checkpoints(self, run_id: str, shards: int) -> None:
        for shard in range(shards):
            fresh = dataclasses.asdict(Checkpoint(run_id=run_id, shard=shard))
            fresh.update(clean_done=[], load_done=[])
            self.checkpoints.update_one({"run_id": run_id, "shard": shard},
                                        {"$setOnInsert": fresh}, upsert=True)

    def get_checkpoint(self, run_id: str, shard: int) -> Checkpoint | None:
        doc = self.checkpoints.find_one({"run_id": run_id, "shard": shard})
        return _doc(Checkpoint, doc)

    def list_checkpoints(self, run_id: str | None = None) -> list[Checkpoint]:
        query = {"run_id": run_id} if run_id else {}
        cursor = self.checkpoints.find(query, {"clean_done": 0, "load_done": 0}).sort(
            [("run_id", ASCENDING), ("shard", ASCENDING)])
        return [_doc(Checkpoint, d) for d in cursor]

    def record_fetch(self, payload: RawPayload, *, exhausted: bool) -> bool:
        try:
            self.payloads.insert_one(dataclasses.asdict(payload))
        except DuplicateKeyError:
            pass  # recorded by an earlier attempt: the checkpoint decides below
        result = self.checkpoints.update_one(
            {"run_id": payload.run_id, "shard": payload.shard, "batches_fetched": payload.batch},
            {"$set": {"cursor": payload.cursor_end, "batches_fetched": payload.batch + 1,
                      "fetch_done": exhausted, "updated_at": utcnow()},
             "$inc": {"rows_fetched": payload.rows}})
        if result.modified_count:
            self.checkpoints.update_one(
                {"run_id": payload.run_id, "shard": payload.shard, "status": "pending"},
                {"$set": {"status": "running"}})
        return result.modified_count == 1

    def finish_fetch(self, run_id: str, shard: int, batches: int) -> bool:
        result = self.checkpoints.update_one(
            {"run_id": run_id, "shard": shard, "batches_fetched": batches, "fetch_done": False},
            {"$set": {"fetch_done": True, "updated_at": utcnow()}})
        self._mark_done_if_complete(run_id, shard)
        return result.modified_count == 1

    def _mark_done_if_complete(self, run_id: str, shard: int) -> None:
        self.checkpoints.update_one(
            {"run_id": run_id, "shard": shard, "fetch_done": True,
             "$expr": {"$gte": ["$batches_loaded", "$batches_fetched"]}},
            {"$set": {"status": "done"}})

    def complete_stage(self, run_id: str, shard: int, batch: int, stage: str,
                       rows: dict[str, int]) -> bool:
        allowed = ROW_COUNTERS.get(stage)
        if allowed is None or set(rows) - set(allowed):
            raise ValueError(f"complete_stage: stage {stage!r} counts only {allowed}, got {sorted(rows)}")
        done_set = f"{stage}_done"
        result = self.checkpoints.update_one(
            {"run_id": run_id, "shard": shard, done_set: {"$ne": batch}},
            {"$addToSet": {done_set: batch},
             "$inc": {BATCH_COUNTERS[stage]: 1, **rows},
             "$set": {"updated_at": utcnow()}})
        self.mark_done(task_fingerprint(stage, run_id, shard, batch), stage, run_id)
        if result.modified_count:
            self.checkpoints.update_one({"run_id": run_id, "shard": shard, "status": "pending"},
                                        {"$set": {"status": "running"}})
            self._mark_done_if_complete(run_id, shard)
        return result.modified_count == 1

    def set_shard_status(self, run_id: str, shard: int, status: str,
                         last_error: str | None = None) -> None:
        changes: dict[str, Any] = {"status": status, "updated_at": utcnow()}
        if last_error is not None:
            changes["last_error"] = last_error
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
        return self.dedup.count_documents({"run_id": run_id} if run_id else {})

    # -- raw payload pointers ------------------------------------------------------------
    def get_payload(self, run_id: str, shard: int, batch: int) -> RawPayload | None:
        return _doc(RawPayload, self.payloads.find_one({"run_id": run_id, "shard": shard, "batch": batch}))

    def list_payloads(self, run_id: str, shard: int | None = None) -> list[RawPayload]:
        query: dict[str, Any] = {"run_id": run_id}
        if shard is not None:
            query["shard"] = shard
        cursor = self.payloads.find(query).sort([("shard", ASCENDING), ("batch", ASCENDING)])
        return [_doc(RawPayload, d) for d in cursor]

    # -- errors --------------------------------------------------------------------------
    def log_error(self, error: ErrorRecord) -> None:
        self.errors.insert_one(dataclasses.asdict(error))

    def list_errors(self, run_id: str | None = None, *, limit: int = 100) -> list[ErrorRecord]:
        query = {"run_id": run_id} if run_id else {}
        cursor = self.errors.find(query).sort([("at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return [_doc(ErrorRecord, d) for d in cursor]

    # -- leases --------------------------------------------------------------------------
    def acquire_lease(self, task_key: str, owner: str, ttl: float,
                      payload_ref: str | None = None) -> Lease | None:
        now = utcnow()
        until = now + timedelta(seconds=ttl)
        ours = self.leases.find_one_and_update(
            {"task_key": task_key, "taken_by": owner, "lease_until": {"$gt": now}},
            {"$set": {"lease_until": until, "heartbeat": now}}, return_document=ReturnDocument.AFTER)
        if ours is not None:
            return _doc(Lease, ours)
        free = {"task_key": task_key, "$or": [{"taken_by": None}, {"lease_until": {"$lte": now}}]}
        current = self.leases.find_one({"task_key": task_key})
        takeover = int(current is not None and current.get("taken_by") is not None)
        update: dict[str, Any] = {
            "$set": {"taken_by": owner, "lease_until": until, "heartbeat": now},
            "$inc": {"token": 1, "retry_count": takeover}}
        if payload_ref is not None:
            update["$set"]["payload_ref"] = payload_ref
        else:
            update["$setOnInsert"] = {"payload_ref": None}
        try:
            taken = self.leases.find_one_and_update(
                free, update, upsert=current is None, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            return None  # another worker created it first
        return _doc(Lease, taken)

    def renew_lease(self, task_key: str, owner: str, token: int, ttl: float) -> bool:
        now = utcnow()
        result = self.leases.update_one(
            {"task_key": task_key, "taken_by": owner, "token": token, "lease_until": {"$gt": now}},
            {"$set": {"lease_until": now + timedelta(seconds=ttl), "heartbeat": now}})
        return result.matched_count == 1  # a renewal in the same millisecond changes nothing

    def release_lease(self, task_key: str, owner: str, token: int) -> bool:
        result = self.leases.update_one({"task_key": task_key, "taken_by": owner, "token": token},
                                        {"$set": {"taken_by": None, "lease_until": None}})
        return result.matched_count == 1

    def get_lease(self, task_key: str) -> Lease | None:
        return _doc(Lease, self.leases.find_one({"task_key": task_key}))
