"""Redis result store: a hash per job, a status key, per-queue and per-run indexes.

Every key has a TTL. A status change is an optimistic compare-and-set done by a Lua script
(the status must still be the one the change was computed from), retried on a race, so two
workers can never both move a job out of the same status. Multi-key reads and writes go
through pipelines (one round trip), over redis-py's connection pool. Short socket timeouts:
an outage costs a task at most a fraction of a second.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Iterable

import redis

from etl.urls import mask_url
from results.base import dumps, loads, summarise
from results.errors import InvalidTransition, JobNotFound
from results.models import (DEFAULT_TTL, JobResult, Transition, check_transition, stamp_fields,
                            utcnow)

_CAS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if current ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'data', ARGV[3])
redis.call('HSET', KEYS[1], 'history', redis.call('HGET', KEYS[1], 'history') .. ARGV[4] .. '\\n')
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl) end
return 1
"""


class RedisResultStore:
    """ResultStore on Redis (redis:// or rediss://)."""

    def __init__(self, url: str, *, prefix: str = "etl", client: redis.Redis | None = None,
                 timeout: float = 0.5) -> None:
        self.url = mask_url(url)
        self.prefix = prefix
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30)
        self._cas = self.client.register_script(_CAS)

    # -- keys ------------------------------------------------------------------------------
    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _status(self, job_id: str) -> str:
        return f"{self.prefix}:status:{job_id}"

    def _index(self, kind: str, name: str | None = None) -> str:
        return f"{self.prefix}:{kind}" + (f":{name}" if name is not None else "")

    def _indexes(self, job: JobResult) -> list[str]:
        keys = [self._index("jobs"), self._index("queue", job.queue)]
        if job.run_id:
            keys.append(self._index("run", job.run_id))
        return keys

    @staticmethod
    def _data(job: JobResult) -> str:
        body = job.to_dict()
        body.pop("history")
        return dumps(body)

    # -- writes ----------------------------------------------------------------------------
    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        ttl = ttl or DEFAULT_TTL
        job.expires_at = utcnow() + ttl
        if not job.history:
            job.history = [Transition(job.status, job.created_at)]
        millis = int(ttl.total_seconds() * 1000)
        score = job.created_at.timestamp()
        history = "".join(dumps(t.__dict__) + "\n" for t in job.history)
        with self.client.pipeline(transaction=True) as pipe:
            key = self._job(job.job_id)
            pipe.delete(key)
            pipe.hset(key, mapping={"status": job.status, "queue": job.queue,
                                    "data": self._data(job), "history": history})
            pipe.pexpire(key, millis)
            pipe.set(self._status(job.job_id), job.status, px=millis)
            for index in self._indexes(job):
                pipe.zadd(index, {job.job_id: score})
                pipe.pexpire(index, millis, gt=True)
                pipe.pexpire(index, millis, nx=True)
            pipe.execute()
        return job

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        for _ in range(20):
            job = self.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            previous = job.status
            check_transition(job_id, previous, status)
            now = utcnow()
            for name, value in {**fields, **stamp_fields(status, now, job.started_at)}.items():
                setattr(job, name, value)
            job.status = status
            entry = Transition(status, now, note)
            job.history.append(entry)
            outcome = self._cas(keys=[self._job(job_id), self._status(job_id)],
                                args=[previous, status, self._data(job), dumps(entry.__dict__)])
            if outcome == 1:
                return job
            if outcome == 0:
                raise JobNotFound(job_id)
            time.sleep(0.001)  # someone changed it meanwhile: recompute from the new state
        raise InvalidTransition(f"job {job_id}: status kept changing; gave up moving it to {status}")

    def delete(self, job_id: str) -> bool:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._job(job_id), self._status(job_id))
            removed = pipe.execute()[0]
        return bool(removed)

    # -- reads -----------------------------------------------------------------------------
    @staticmethod
    def _decode(data: bytes | None, history: bytes | None) -> JobResult | None:
        if data is None:
            return None
        body = loads(data)
        body["history"] = [loads(line) for line in (history or b"").splitlines() if line]
        return JobResult.from_dict(body)

    def get(self, job_id: str) -> JobResult | None:
        data, history = self.client.hmget(self._job(job_id), ["data", "history"])
        return self._decode(data, history)

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        ids = list(dict.fromkeys(job_ids))
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._job(job_id), ["data", "history"])
            replies = pipe.execute()
        found = {}
        for job_id, (data, history) in zip(ids, replies):
            job = self._decode(data, history)
            if job is not None:
                found[job_id] = job
        return found

    def get_status(self, job_id: str) -> str | None:
        value = self.client.get(self._status(job_id))
        return value.decode() if value is not None else None

    def history(self, job_id: str) -> list[Transition]:
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job.history

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        index = (self._index("run", run_id) if run_id else
                 self._index("queue", queue) if queue else self._index("jobs"))
        found: list[JobResult] = []
        start, page = 0, max(limit, 500)
        while len(found) < limit:
            ids = [i.decode() for i in self.client.zrevrange(index, start, start + page - 1)]
            if not ids:
                break
            jobs = self.get_many(ids)
            found.extend(j for i in ids if (j := jobs.get(i)) is not None
                         and (status is None or j.status == status)
                         and (queue is None or j.queue == queue))
            start += page
        return found[:limit]

    def cleanup_expired(self) -> int:
        """Records expire by TTL; this drops index entries whose record has expired."""
        removed = 0
        for index in self.client.scan_iter(match=f"{self.prefix}:jobs", count=1000):
            removed += self._prune(index)
        for pattern in (f"{self.prefix}:queue:*", f"{self.prefix}:run:*"):
            for index in self.client.scan_iter(match=pattern, count=1000):
                self._prune(index)
        return removed

    def _prune(self, index: bytes) -> int:
        removed = 0
        cursor = 0
        while True:
            cursor, members = self.client.zscan(index, cursor, count=1000)
            ids = [m.decode() for m, _ in members]
            if ids:
                with self.client.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.exists(self._job(job_id))
                    alive = pipe.execute()
                gone = [i for i, there in zip(ids, alive) if not there]
                if gone:
                    removed += self.client.zrem(index, *gone)
            if cursor == 0:
                return removed

    def stats(self) -> dict[str, Any]:
        rows = []
        cursor = 0
        while True:
            cursor, members = self.client.zscan(self._index("jobs"), cursor, count=1000)
            with self.client.pipeline(transaction=False) as pipe:
                for member, _ in members:
                    pipe.hmget(self._job(member.decode()), ["status", "queue", "data"])
                replies = pipe.execute()
            for status, queue, data in replies:
                if status is not None:
                    rows.append((status.decode(), queue.decode(), loads(data).get("duration")))
            if cursor == 0:
                return summarise(rows)

    def close(self) -> None:
        self.client.close()
