"""MongoDB result store: one document per job, a TTL index on expires_at (MongoDB removes
expired records by itself; cleanup_expired does it at once), status changes as a
compare-and-set on the status the change was computed from. A batch of changes
(`write_many`) is one find and one unordered bulk write, each job written once."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from pymongo import ASCENDING, DESCENDING, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from etl.core.mongo_client import connect, database_of
from etl.core.urls import mask_url
from results.base import job_history, summarise
from results.changes import Change, Outcome, StatusChange, settle, to_read
from results.errors import InvalidTransition, JobNotFound
from results.models import (DEFAULT_TTL, JobResult, Transition, check_transition, mask_change,
                            mask_job, ready_to_store, stamp_fields, utcnow)


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if isinstance(value, dict):
        return {k: _aware(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_aware(v) for v in value]
    return value


class MongoResultStore:
    """ResultStore on a MongoDB collection named JobResult."""

    def __init__(self, url: str, *, client: Any = None, database: str | None = None,
                 collection: str = "JobResult") -> None:
        self.url = mask_url(url)
        # short timeouts: a result-store outage must cost a task little (see middleware)
        self.client = client if client is not None else connect(url, timeout_ms=2000)
        self.jobs = self.client[database or database_of(url)][collection]
        self.jobs.create_index([("job_id", ASCENDING)], unique=True)
        self.jobs.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        self.jobs.create_index([("run_id", ASCENDING), ("created_at", DESCENDING)])
        self.jobs.create_index([("queue", ASCENDING), ("created_at", DESCENDING)])
        self.jobs.create_index([("status", ASCENDING)])

    def _live(self) -> dict[str, Any]:
        return {"expires_at": {"$gt": utcnow()}}

    @staticmethod
    def _job(doc: dict[str, Any] | None) -> JobResult | None:
        if doc is None:
            return None
        doc.pop("_id", None)
        return JobResult.from_dict(_aware(doc))

    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        ready_to_store(job, ttl)
        self.jobs.replace_one({"job_id": job.job_id}, job.to_dict(), upsert=True)
        return job

    def claim(self, job: JobResult, *, ttl: timedelta | None = None) -> bool:
        """`store` if no live record of the id exists: an insert, which the unique index on
        job_id lets only one racer make; a document found there is replaced only if it
        expired (MongoDB's TTL monitor may not have removed it yet), by a replace filtered on
        that (one document's write is atomic: a second racer's filter no longer matches)."""
        ready_to_store(job, ttl)
        try:
            self.jobs.insert_one(job.to_dict())
            return True
        except DuplicateKeyError:
            pass  # a record of this id is there: take its place only if it expired
        return self.jobs.replace_one({"job_id": job.job_id, "expires_at": {"$lte": utcnow()}},
                                     job.to_dict()).matched_count == 1

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        note, fields = mask_change(note, fields)
        for _ in range(20):
            job = self.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            check_transition(job_id, job.status, status)
            now = utcnow()
            changes = {**fields, **stamp_fields(status, now, job.started_at), "status": status}
            entry = Transition(status, now, note)
            updated = self.jobs.find_one_and_update(
                {"job_id": job_id, "status": job.status},
                {"$set": changes, "$push": {"history": entry.__dict__}},
                return_document=ReturnDocument.AFTER)
            if updated is not None:
                return self._job(updated)  # type: ignore[return-value]
            time.sleep(0.001)  # changed meanwhile: recompute from the new state
        raise InvalidTransition(f"job {job_id}: status kept changing; gave up moving it to {status}")

    def write_many(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply a batch of new records and status changes in two round trips: one find of
        the records it moves, one unordered bulk write (a new record replaced whole; a moved
        one updated on the status and history length it was read with, and tagged with this
        batch's id). A job someone else changed meanwhile has its changes applied again, one
        by one, with update_status."""
        if not changes:
            return []
        ids = to_read(changes)
        stored = self.get_many(ids) if ids else {}
        jobs, outcomes = settle(changes, stored)
        batch, now = uuid.uuid4().hex, utcnow()
        writes: list[Any] = []
        moved: list[Any] = []
        for settled in jobs:
            job = settled.final
            if job is None or not settled.changed:
                continue
            mask_job(job)
            if settled.created is not None:
                job.expires_at = now + (settled.created.ttl or DEFAULT_TTL)
                writes.append(ReplaceOne({"job_id": job.job_id}, job.to_dict(), upsert=True))
                continue
            assert settled.expected is not None
            status, length = settled.expected
            values = {name: getattr(job, name) for name in settled.fields}
            values.update(status=job.status, written_by=batch)
            writes.append(UpdateOne(
                {"job_id": job.job_id, "status": status, "history": {"$size": length}},
                {"$set": values,
                 "$push": {"history": {"$each": [t.__dict__ for t in job.history[length:]]}}}))
            moved.append(settled)
        if not writes:
            return outcomes
        done = self.jobs.bulk_write(writes, ordered=False)
        if moved and done.matched_count < len(moved) + sum(
                isinstance(w, ReplaceOne) for w in writes) - done.upserted_count:
            landed = {doc["job_id"] for doc in self.jobs.find(
                {"job_id": {"$in": [m.job_id for m in moved]}, "written_by": batch}, {"job_id": 1})}
            for settled in moved:
                if settled.job_id in landed:
                    continue
                for position in settled.positions:  # raced, or deleted: as update_status would
                    change = changes[position]
                    assert isinstance(change, StatusChange)
                    try:
                        self.update_status(change.job_id, change.status, note=change.note,
                                           **dict(change.fields))
                        outcomes[position] = None
                    except (JobNotFound, InvalidTransition) as refused:
                        outcomes[position] = refused
        return outcomes

    def get(self, job_id: str) -> JobResult | None:
        return self._job(self.jobs.find_one({"job_id": job_id, **self._live()}))

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        docs = self.jobs.find({"job_id": {"$in": list(dict.fromkeys(job_ids))}, **self._live()})
        return {job.job_id: job for job in map(self._job, docs) if job is not None}

    def get_status(self, job_id: str) -> str | None:
        doc = self.jobs.find_one({"job_id": job_id, **self._live()}, {"status": 1})
        return doc["status"] if doc else None

    def history(self, job_id: str) -> list[Transition]:
        return job_history(self, job_id)

    def delete(self, job_id: str) -> bool:
        return self.jobs.delete_one({"job_id": job_id}).deleted_count == 1

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        query: dict[str, Any] = dict(self._live())
        for name, value in (("run_id", run_id), ("status", status), ("queue", queue)):
            if value is not None:
                query[name] = value
        docs = self.jobs.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return [j for j in map(self._job, docs) if j is not None]

    def cleanup_expired(self) -> int:
        return self.jobs.delete_many({"expires_at": {"$lte": utcnow()}}).deleted_count

    def stats(self) -> dict[str, Any]:
        docs = self.jobs.find(self._live(), {"status": 1, "queue": 1, "duration": 1})
        return summarise(((d["status"], d["queue"], d.get("duration")) for d in docs),
                         store="mongodb")

    def close(self) -> None:
        self.client.close()
