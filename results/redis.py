"""Redis result store: a hash per job, a status key, per-queue and per-run indexes.

Layout, chosen for memory (about 850 bytes a record): each field of the record is its own
small hash field (JSON value), and each history step too (`h:0`, `h:1`, ...), so a typical
job's hash stays in Redis's compact listpack encoding; its status is read from the hash
(a separate status key cost ~100 bytes and a write per record). Indexes are sorted sets scored by expiry time: listing walks them newest
first, and cleanup drops expired members with one ZREMRANGEBYSCORE per index.

A status change is an optimistic compare-and-set in a Lua script (the status must still be
the one the change was computed from), retried on a race, so two workers can never both move
a job out of the same status. A batch of changes (`write_many`) is one pipeline of reads and
one of writes, each job moved once by a compare-and-set on its status and history length.
Multi-key writes go through pipelines, over redis-py's connection pool; short socket
timeouts keep an outage from stalling a caller.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import redis

from etl.core.urls import mask_url
from results.base import job_history, dumps, loads, summarise
from results.changes import Change, Outcome, StatusChange, settle, to_read
from results.errors import InvalidTransition, JobNotFound
from results.models import (DEFAULT_TTL, JobResult, Transition, check_transition, mask_change,
                            mask_job, ready_to_store, stamp_fields, utcnow)

_CAS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if current ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local n = redis.call('HINCRBY', KEYS[1], 'hn', 1)
redis.call('HSET', KEYS[1], 'h:' .. (n - 1), ARGV[3])
return 1
"""


# A job's changes of one batch: compare its status and history length with those it was
# read with, then set the final status, append the steps and set the fields. ARGV =
# expected status, expected length, final status, the steps and the field/value pairs each
# joined by \x1e (see _STORE: packing is what costs in redis-py, not Redis).
_MOVE = """
local function split(packed)
  local parts, start = {}, 1
  if packed == '' then return parts end
  while true do
    local at = string.find(packed, '\\30', start, true)
    if not at then table.insert(parts, string.sub(packed, start)); return parts end
    table.insert(parts, string.sub(packed, start, at - 1))
    start = at + 1
  end
end
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local length = tonumber(redis.call('HGET', KEYS[1], 'hn') or '-1')
if current ~= ARGV[1] or length ~= tonumber(ARGV[2]) then return -1 end
local steps, pairs = split(ARGV[4]), split(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'hn', length + #steps)
for i = 1, #steps do redis.call('HSET', KEYS[1], 'h:' .. (length + i - 1), steps[i]) end
if #pairs > 0 then redis.call('HSET', KEYS[1], unpack(pairs)) end
return 1
"""

# Bulk write: ARGV = ttl_ms, job_prefix, status_prefix, then per record: id, status, and its
# field/value pairs joined by \x1e (JSON escapes that byte, so it never occurs inside one).
# One script call per chunk, three arguments per record: redis-py packs every argument in
# pure Python, and that, not Redis, was the cost of a write.
_SEP = "\x1e"
_STORE = """
local ttl = tonumber(ARGV[1])
for i = 4, #ARGV, 3 do
  local key = ARGV[2] .. ARGV[i]
  local status = ARGV[i + 1]
  local pairs, packed, start = {}, ARGV[i + 2], 1
  while true do
    local at = string.find(packed, '\\30', start, true)
    if not at then table.insert(pairs, string.sub(packed, start)); break end
    table.insert(pairs, string.sub(packed, start, at - 1))
    start = at + 1
  end
  redis.call('DEL', key)
  redis.call('HSET', key, 'status', status, unpack(pairs))
  redis.call('PEXPIRE', key, ttl)
end
return 1
"""


# Drop from the index set (KEYS[1]) the indexes (KEYS[2:]) that no longer exist, atomically
# with respect to a write that makes one again (its ZADD and SADD are one transaction).
_FORGET = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], KEYS[i]) end
end
return 1
"""


#: A history step a batch did not read (results.redis.RedisResultStore._heads).
_UNREAD = Transition("", datetime.fromtimestamp(0, tz=timezone.utc))


def _step(step: Transition) -> str:
    """One history step: [status, epoch seconds(, note)]."""
    entry: list[Any] = [step.status, round(step.at.timestamp(), 3)]
    if step.note:
        entry.append(step.note)
    return dumps(entry)


def _fields(job: JobResult) -> dict[str, str]:
    """The record as hash fields: JSON values, the status as plain text."""
    fields = {name: dumps(value) for name, value in job.to_compact().items() if name != "status"}
    fields["status"] = job.status
    return fields


def _decode(raw: dict[bytes, bytes]) -> JobResult | None:
    if not raw:
        return None
    data: dict[str, Any] = {}
    steps: list[tuple[int, Transition]] = []
    for name, value in raw.items():
        key = name.decode()
        if key.startswith("h:"):
            status, at, *note = loads(value)
            steps.append((int(key[2:]), Transition(status, datetime.fromtimestamp(at, tz=timezone.utc),
                                                   note[0] if note else None)))
        elif key == "status":
            data["status"] = value.decode()
        elif key != "hn":
            data[key] = loads(value)
    return JobResult.from_compact(data, [t for _, t in sorted(steps, key=lambda s: s[0])])


class RedisResultStore:
    """ResultStore on Redis (redis:// or rediss://)."""

    def __init__(self, url: str, *, prefix: str = "etl", client: redis.Redis | None = None,
                 timeout: float = 0.5) -> None:
        self.url = mask_url(url)
        self.prefix = prefix
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30)
        self._cas = self.client.register_script(_CAS)
        self._store = self.client.register_script(_STORE)
        self._move = self.client.register_script(_MOVE)
        self._forget = self.client.register_script(_FORGET)

    @property
    def _index_set(self) -> str:
        """The set of this store's index keys (queues and runs)."""
        return f"{self.prefix}:indexes"

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _status(self, job_id: str) -> str:
        return f"{self.prefix}:status:{job_id}"

    def _indexes(self, job: JobResult) -> list[str]:
        keys = [f"{self.prefix}:queue:{job.queue}"]
        if job.run_id:
            keys.append(f"{self.prefix}:run:{job.run_id}")
        return keys

    # -- writes ----------------------------------------------------------------------------
    def store(self, job: JobResult, *, ttl: timedelta | None = None) -> JobResult:
        return self.store_many([job], ttl=ttl)[0]

    def store_many(self, jobs: list[JobResult], *, ttl: timedelta | None = None) -> list[JobResult]:
        """Write many records in one pipelined round trip (MULTI/EXEC)."""
        if not jobs:
            return jobs
        with self.client.pipeline(transaction=True) as pipe:
            self._queue_store(pipe, jobs, ttl)
            pipe.execute()
        return jobs

    def claim(self, job: JobResult, *, ttl: timedelta | None = None) -> bool:
        """`store` if the job's hash does not exist (an expired record's hash is gone: its
        key's TTL is the record's): the hash is WATCHed, and the same writes as `store`
        (record, TTL, indexes) run in MULTI/EXEC only if no one wrote it meanwhile, so of
        racers for one id exactly one's EXEC succeeds."""
        key = self._job(job.job_id)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if pipe.exists(key):
                    return False
                pipe.multi()
                self._queue_store(pipe, [job], ttl)
                pipe.execute()
            except redis.WatchError:
                return False  # another claim (or write) of this id came first
        return True

    def _queue_store(self, pipe: Any, jobs: list[JobResult], ttl: timedelta | None) -> None:
        """Queue on `pipe` the writes of whole records living `ttl`, and their index entries."""
        ttl = ttl or DEFAULT_TTL
        expires = utcnow() + ttl
        millis = int(ttl.total_seconds() * 1000)
        indexes: dict[str, dict[str, float]] = {}
        args: list[Any] = [millis, self._job(""), self._status("")]
        for job in jobs:
            ready_to_store(job, ttl, now=expires - ttl)
            mapping = _fields(job)
            del mapping["status"]
            mapping.update({f"h:{i}": _step(t) for i, t in enumerate(job.history)})
            mapping["hn"] = str(len(job.history))
            args += [job.job_id, job.status,
                     _SEP.join(f"{name}{_SEP}{value}" for name, value in mapping.items())]
            for index in self._indexes(job):
                indexes.setdefault(index, {})[job.job_id] = expires.timestamp()
        self._store(args=args, client=pipe)
        for index, members in indexes.items():
            pipe.zadd(index, members)
            pipe.pexpire(index, millis, gt=True)
            pipe.pexpire(index, millis, nx=True)
        if indexes:
            pipe.sadd(self._index_set, *indexes)  # known to cleanup and stats without a SCAN

    def write_many(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply a batch of new records and status changes in two round trips: the records
        it moves read in one pipeline, then each job written once in another (a new record
        whole; a moved one by a compare-and-set on the status and history length it was
        read with). A job someone else changed meanwhile has its changes applied again, one
        by one, with update_status."""
        if not changes:
            return []
        ids = to_read(changes)
        jobs, outcomes = settle(changes, self._heads(ids) if ids else {})
        new: dict[timedelta | None, list[JobResult]] = {}
        moves: list[tuple[Any, int]] = []  # (the job's Settled, its reply's place)
        with self.client.pipeline(transaction=True) as pipe:
            for settled in jobs:
                job = settled.final
                if job is None or not settled.changed:
                    continue
                if settled.created is not None:
                    new.setdefault(settled.created.ttl, []).append(job)
                    continue
                assert settled.expected is not None
                status, length = settled.expected
                mask_job(job)
                compact = job.to_compact()
                steps = _SEP.join(_step(t) for t in job.history[length:])
                pairs = _SEP.join(f"{name}{_SEP}{dumps(compact.get(name, getattr(job, name)))}"
                                  for name in settled.fields)
                moves.append((settled, len(pipe)))
                self._move(keys=[self._job(job.job_id), self._status(job.job_id)],
                           args=[status, length, job.status, steps, pairs], client=pipe)
            for ttl, created in new.items():
                self._queue_store(pipe, created, ttl)
            replies = pipe.execute() if len(pipe) else []
        for settled, place in moves:
            if replies[place] == 1:
                continue
            for position in settled.positions:  # raced, or deleted: as update_status would
                change = changes[position]
                assert isinstance(change, StatusChange)
                try:
                    if replies[place] == 0:
                        raise JobNotFound(change.job_id)
                    self.update_status(change.job_id, change.status, note=change.note,
                                       **dict(change.fields))
                    outcomes[position] = None
                except (JobNotFound, InvalidTransition) as refused:
                    outcomes[position] = refused
        return outcomes

    def _heads(self, ids: list[str]) -> dict[str, JobResult]:
        """What a batch needs of the records it moves, in one pipeline: status, history
        length and start (a finished job's duration), as a record holding only those (its
        history of that length unread). Reading and decoding whole records cost more than
        the rest of the write; the write sets only what the changes touch."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._job(job_id), ["status", "hn", "started_at"])
            replies = pipe.execute()
        heads: dict[str, JobResult] = {}
        for job_id, (status, length, started) in zip(ids, replies):
            if status is None:
                continue  # no record
            if length is None:  # no history count kept: read it whole
                whole = self.get(job_id)
                if whole is not None:
                    heads[job_id] = whole
                continue
            at = loads(started) if started is not None else None
            heads[job_id] = JobResult(
                job_id=job_id, function="", status=status.decode(),
                started_at=datetime.fromtimestamp(at, tz=timezone.utc) if at is not None else None,
                history=[_UNREAD] * int(length))
        self._last_steps([head for head in heads.values()
                          if head.history and head.history[-1] is _UNREAD and head.finished])
        return heads

    def _last_steps(self, heads: list[JobResult]) -> None:
        """Read the last history step of finished records (results.changes tells a worker's
        late change to an end that was settled for it by that step's note): rare, as a
        worker's changes move open records."""
        if not heads:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hget(self._job(head.job_id), f"h:{len(head.history) - 1}")
            replies = pipe.execute()
        for head, raw in zip(heads, replies):
            if raw is not None:
                status, at, *note = loads(raw)
                head.history[-1] = Transition(status, datetime.fromtimestamp(at, tz=timezone.utc),
                                              note[0] if note else None)

    def update_status(self, job_id: str, status: str, *, note: str | None = None,
                      **fields: Any) -> JobResult:
        note, fields = mask_change(note, fields)
        for _ in range(20):
            job = self.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            previous = job.status
            check_transition(job_id, previous, status)
            now = utcnow()
            changes = {**fields, **stamp_fields(status, now, job.started_at)}
            for name, value in changes.items():
                setattr(job, name, value)
            job.status = status
            entry = Transition(status, now, note)
            job.history.append(entry)
            compact = job.to_compact()
            pairs: list[str] = []
            for name in changes:  # a default (retry_count 0) is absent from compact: not null
                pairs += [name, dumps(compact.get(name, getattr(job, name)))]
            outcome = self._cas(keys=[self._job(job_id), self._status(job_id)],
                                args=[previous, status, _step(entry), *pairs])
            if outcome == 1:
                return job
            if outcome == 0:
                raise JobNotFound(job_id)
            time.sleep(0.001)  # someone changed it meanwhile: recompute from the new state
        raise InvalidTransition(f"job {job_id}: status kept changing; gave up moving it to {status}")

    def delete(self, job_id: str) -> bool:
        # (the status key is gone from the layout; a record written before still has one)
        return bool(self.client.delete(self._job(job_id), self._status(job_id)))

    # -- reads -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobResult | None:
        return _decode(self.client.hgetall(self._job(job_id)))

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobResult]:
        ids = list(dict.fromkeys(job_ids))
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._job(job_id))
            replies = pipe.execute()
        return {job_id: job for job_id, raw in zip(ids, replies) if (job := _decode(raw)) is not None}

    def get_status(self, job_id: str) -> str | None:
        value = self.client.hget(self._job(job_id), "status")
        return value.decode() if value is not None else None

    def history(self, job_id: str) -> list[Transition]:
        return job_history(self, job_id)

    def _all_indexes(self) -> list[bytes]:
        """Every index key: the index set's members (a store written before the set was
        kept is scanned for them once, and they are added)."""
        known = list(self.client.smembers(self._index_set))
        if not known:
            known = [key for pattern in ("queue", "run") for key in self.client.scan_iter(
                match=f"{self.prefix}:{pattern}:*", count=1000)]
            if known:
                self.client.sadd(self._index_set, *known)
        return known

    def _queue_indexes(self) -> list[bytes]:
        return [key for key in self._all_indexes() if key.startswith(f"{self.prefix}:queue:".encode())]

    def list(self, *, run_id: str | None = None, status: str | None = None,
             queue: str | None = None, limit: int = 100) -> list[JobResult]:
        if run_id:
            indexes: list[Any] = [f"{self.prefix}:run:{run_id}"]
        elif queue:
            indexes = [f"{self.prefix}:queue:{queue}"]
        else:
            indexes = self._queue_indexes()
        live = utcnow().timestamp()
        found: list[JobResult] = []
        for index in indexes:
            start, page = 0, max(limit, 500)
            kept = 0
            while kept < limit:
                ids = [i.decode() for i in self.client.zrevrangebyscore(
                    index, "+inf", f"({live}", start=start, num=page)]
                if not ids:
                    break
                jobs = self.get_many(ids)
                matched = [j for i in ids if (j := jobs.get(i)) is not None
                           and (status is None or j.status == status)
                           and (queue is None or j.queue == queue)]
                found.extend(matched)
                kept += len(matched)
                start += page
        found.sort(key=lambda j: j.created_at, reverse=True)
        return found[:limit]

    def cleanup_expired(self) -> int:
        """Records expire by their TTL; this drops them from the indexes. Each record is in
        exactly one queue index, so the queue indexes' removals are the count."""
        now = utcnow().timestamp()
        queue = f"{self.prefix}:queue:".encode()
        indexes = sorted(self._all_indexes(), key=lambda key: not key.startswith(queue))
        queues = sum(key.startswith(queue) for key in indexes)
        with self.client.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.zremrangebyscore(index, "-inf", now)
                pipe.exists(index)
            replies = pipe.execute()
        removed, alive = replies[0::2], replies[1::2]
        gone = [index for index, live in zip(indexes, alive) if not live]
        if gone:  # emptied (or expired) indexes leave the set, unless written again meanwhile
            self._forget(keys=[self._index_set, *gone])
        return sum(removed[:queues])

    def stats(self) -> dict[str, Any]:
        live = utcnow().timestamp()
        rows = []
        for index in self._queue_indexes():
            cursor = 0
            while True:
                cursor, members = self.client.zscan(index, cursor, count=1000)
                ids = [m.decode() for m, score in members if score > live]
                with self.client.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hmget(self._job(job_id), ["status", "queue", "duration"])
                    replies = pipe.execute()
                rows.extend((s.decode(), loads(q), loads(d) if d else None)
                            for s, q, d in replies if s is not None)
                if cursor == 0:
                    break
        return summarise(rows, store="redis")

    def close(self) -> None:
        self.client.close()
