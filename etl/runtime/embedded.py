"""Embedded mode: run a pipeline on this machine with Dramatiq's StubBroker, no services.

The same actors as distributed mode. Each local worker process has an in-memory broker and
worker threads, and works shards no other process works, so processes never contend for the
same shard and pandas work uses every core despite the GIL; there a shard is one message,
whose delivery runs its batches' steps in turn (etl.runtime.inline). Shards are shared out
by their rows where the source can count them (largest first, each to the process with the
fewest rows so far), else by shard number modulo processes; a process that ends its share
early then takes shards of the others not begun yet (etl.runtime.claims). Processes are
forked after the source is parsed and its rows grouped by shard, so they share it instead
of re-reading it; each then gathers the rows of its own shards (a ShardGrouped source), in
parallel with the others, and the rows of a shard it takes over when it takes it.

A cancelled run (etl.runtime.cancel) is seen by every process on its next poll: its
steps are acked without work, the steps in hand finish, and the processes end.

After a crash nothing of an in-memory broker survives; what survives is the state store,
and `find_pending` turns it back into exactly the messages still needed. That is how
`etl run` resumes.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
from multiprocessing.connection import Connection, wait
import os
import threading
import time
from typing import Callable, Collection, Sequence

import dramatiq

from etl.brokers import open_broker
from etl.core import collector
from etl.runtime.actors import QUEUE, declare_actors
from etl.runtime.claims import ShardClaims
from etl.runtime.loaded_keys import LOADED_KEYS
from etl.runtime.shard_frames import SHARD_FRAMES
from etl.runtime.cancel import is_cancelled
from etl.runtime.context import ContextCache, RunContext
from etl.core.logs import summarize_floods
from etl.core.processes import die_with_parent
from etl.sinks.base import KeyAudit
from etl.sources.base import ShardGrouped
from etl.runtime.runs import Pending, ProgressCallback, WorkOutcome, all_loaded, find_pending
from results.base import ResultStore

log = logging.getLogger(__name__)

#: How long a cancelled run's queue is given to drain (its messages acked without work,
#: within about a second) before the worker stops with what is left on a delay.
CANCEL_DRAIN_S = 3.0
#: Seconds between the result writer's batches in a run's own processes (a worker's: 0.05).
#: Each batch is written while the worker thread works, and the two threads then hand the
#: interpreter back and forth at every SQLite statement: at 0.05 s, ~10 context switches of
#: the writer and as many of the worker thread per data batch. Every record of an embedded
#: run is written by the process that runs its message (no other process waits on them),
#: so a record readable within ~0.25 s instead of ~0.05 s costs nothing and saves 0.35-0.7 ms
#: CPU per data batch (8 alternated rounds, the demo at 180 vs 20 batches, 2026-12-07).
RECORD_INTERVAL_S = 0.25


def _only(pending: Pending, shards: set[int]) -> Pending:
    return Pending(fetch=[p for p in pending.fetch if p[0] in shards],
                   clean=[p for p in pending.clean if p[0] in shards],
                   load=[p for p in pending.load if p[0] in shards])


def _work(ctx: RunContext, pending: Pending, *, threads: int, poll: float,
          on_progress: ProgressCallback | None, results: ResultStore | None,
          more: Callable[[], Pending | None] | None = None) -> int:
    """Run `pending` on an in-memory broker until its queue drains, then what `more` hands
    on, until it hands on nothing (None); the dead letters left."""
    collector.resume()  # paused while the run opened (etl.core.collector)
    broker = open_broker("stub://")
    broker.emit_after("process_boot")
    contexts = ContextCache()
    contexts.register(ctx)
    actors = declare_actors(broker, contexts, results=results, routed=False, inline=True,
                            record_interval=RECORD_INTERVAL_S)

    def send(part: Pending) -> None:
        for stage, items in (("load", part.load), ("clean", part.clean), ("fetch", part.fetch)):
            for shard, batch in items:
                actors.send_batch(ctx.run_id, shard, batch, from_stage=stage)

    send(pending)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=20)  # fast stop
    worker.start()
    done = threading.Event()

    def wait_for_queue() -> None:
        try:
            broker.join(QUEUE, fail_fast=False)
        finally:
            done.set()

    def follow() -> None:
        done.clear()
        threading.Thread(target=wait_for_queue, name="etl-join", daemon=True).start()

    follow()
    cancelled_at: float | None = None

    def cancelled() -> bool:
        """Whether the run is cancelled (seen once: the actors then ack what is queued
        without work, and their records end cancelled)."""
        nonlocal cancelled_at
        if cancelled_at is None and is_cancelled(ctx.state, ctx.run_id):
            log.info("run %s cancelled: stopping once the steps in hand end", ctx.run_id)
            cancelled_at = time.monotonic()
        return cancelled_at is not None

    try:
        while True:
            if done.wait(poll):
                # (a cancelled run claims no more shards)
                part = more() if more is not None and not cancelled() else None
                if part is None:
                    break
                send(part)
                follow()
                continue
            if on_progress:
                on_progress(ctx.state.list_checkpoints(ctx.run_id))
            cancelled()
            if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_DRAIN_S:
                break  # what is left waits on a delay (a deferral, a retry's back-off)
    finally:
        if done.is_set():  # drained: nothing in hand, so every thread is told to stop at once
            # (Worker.stop stops its workers, waits up to worker_timeout, then its consumers
            # and waits again: ~40 ms at the end of every process, on the run's critical path)
            for thread in (*worker.workers, *worker.consumers.values()):
                thread.stop()
        worker.stop()  # steps in hand finish (a load commits or rolls back, leases are released)
        broker.close()
    return len(broker.dead_letters_by_queue.get(QUEUE, []))


def share_out(shards: Collection[int], processes: int,
              sizes: Sequence[int] | None = None) -> list[list[int]]:
    """The shards each of `processes` begins with, in the order to work them: balanced by
    `sizes` (rows per shard) when given, largest first to the process with the fewest rows
    so far (the run ends when its last process does: shard % processes left the demo's two
    processes 164,049 and 172,727 rows, this 168,366 and 168,410), each share largest
    first; else shard % processes, in shard order."""
    owned: list[list[int]] = [[] for _ in range(processes)]
    if sizes is None:
        for shard in sorted(shards):
            owned[shard % processes].append(shard)
        return owned
    loads = [0] * processes
    for shard in sorted(shards, key=lambda s: (-sizes[s], s)):
        least = min(range(processes), key=lambda i: (loads[i], i))
        owned[least].append(shard)
        loads[least] += sizes[shard]
    return owned


def _die_with_parent(parent: int) -> None:
    """Have this child die with `parent`, so a killed `etl run` leaves no orphan worker
    behind, even one whose parent died before the kernel was told (etl.core.processes)."""
    die_with_parent(parent)


def _key_counts(ctx: RunContext) -> dict[int, int]:
    """Keys in more than one batch, per shard whose every batch this process loaded
    (etl.runtime.loaded_keys); the shards it cannot vouch for are left to the files."""
    if ctx.loaded_keys is None:
        return {}
    try:
        return ctx.loaded_keys.counts(ctx.run_id, ctx.state.list_checkpoints(ctx.run_id),
                                      list(ctx.pipeline.key))
    except Exception:  # noqa: BLE001 - the audit then reads the files, as it can always
        log.warning("run %s: keys of the loaded batches not counted here; the key audit "
                    "reads the files", ctx.run_id, exc_info=True)
        return {}
    finally:
        ctx.loaded_keys.forget(ctx.run_id)


def _child(ctx: RunContext, pending: Pending, own: list[int], others: list[int],
           claims: ShardClaims, threads: int, results: ResultStore | None,
           parent: int, report: Connection) -> None:
    _die_with_parent(parent)
    source = ctx.pipeline.source
    grouped = isinstance(source, ShardGrouped)
    if grouped:  # this process's shards only, beside the others
        source.prepare_shards(ctx.plan, set(own))

    def claimed() -> Pending | None:
        """Up to `threads` shards claimed for this process (None: all are claimed)."""
        taken: set[int] = set()
        while len(taken) < threads and (shard := claims.next(own, others)) is not None:
            taken.add(shard)
        if not taken:
            return None
        if grouped:  # a shard taken over from another process is gathered now
            source.prepare_shards(ctx.plan, taken)
        return _only(pending, taken)

    first = claimed()
    dead = 0 if first is None else _work(ctx, first, threads=threads, poll=0.5,
                                         on_progress=None, results=results, more=claimed)
    try:
        report.send(_key_counts(ctx))
    except OSError:  # the parent is gone: nobody needs the counts
        pass
    logging.shutdown()
    os._exit(min(dead, 125))


def _work_in_processes(ctx: RunContext, pending: Pending, *, processes: int, threads: int,
                       poll: float, on_progress: ProgressCallback | None,
                       results: ResultStore | None) -> tuple[int, int, dict[int, int]]:
    """Fork the worker processes, wait for them; (dead letters, processes killed, the
    key counts of the shards each loaded whole: `_key_counts`)."""
    source = ctx.pipeline.source
    source.prepare(ctx.plan)  # parse and group once, shared by every fork
    sizes = source.shard_sizes(ctx.plan) if isinstance(source, ShardGrouped) else None
    shards = {s for s, _ in pending.fetch + pending.clean + pending.load}
    owners = share_out(shards, processes, sizes)
    fork = multiprocessing.get_context("fork")
    claims = ShardClaims(max(shards, default=0) + 1, context=fork)
    gc.freeze()  # the children's collections skip what exists now: no copy-on-write of it
    children = []
    reports: list[Connection] = []  # each child's key counts, sent as it ends
    for index, own in enumerate(owners):
        others = [s for i, share in enumerate(owners) if i != index for s in share]
        if sizes is not None:  # taken over smallest first: the last ones end soonest
            others.sort(key=lambda s: (-sizes[s], s))
        if own:
            reader, writer = fork.Pipe(duplex=False)
            child = fork.Process(target=_child, name=f"etl-worker-{index}",
                                 args=(ctx, pending, own, others, claims, threads, results,
                                       os.getpid(), writer))
            child.start()
            writer.close()  # the child's end: the reader sees EOF once the child is gone
            children.append(child)
            reports.append(reader)
    gc.unfreeze()  # this process collects as before
    collector.resume()
    dead = killed = 0
    counts: dict[int, int] = {}
    try:
        running: dict[object, object] = {child.sentinel: child for child in children}
        running.update(dict.fromkeys(reports))
        while running:
            if on_progress:
                on_progress(ctx.state.list_checkpoints(ctx.run_id))
            for ended in wait(list(running), timeout=poll):  # wakes as soon as one exits
                running.pop(ended)
                if isinstance(ended, Connection):
                    counts.update(_received(ended))
    except BaseException:  # Ctrl-C or any failure here: stop the workers now, resume later
        for child in children:
            child.kill()
        raise
    finally:
        for child in children:
            child.join()
            if child.exitcode and child.exitcode > 0:
                dead += child.exitcode
            elif child.exitcode:
                killed += 1
                log.error("%s died with signal %d", child.name, -child.exitcode)
        for reader in reports:
            reader.close()
    return dead, killed, counts


def _received(reader: Connection) -> dict[int, int]:
    """What a child sent on `reader` (nothing, when it died first)."""
    try:
        sent = reader.recv()
    except (EOFError, OSError):
        return {}
    return {int(s): int(n) for s, n in sent.items()} if isinstance(sent, dict) else {}


#: How often a run's worker processes are started again, in one call, after some were
#: killed (the OOM killer, a stray kill): their work is in the state store, so a new
#: process takes it up where they stopped.
RESTARTS = 2


#: A run over fewer source rows than this works in the calling process: forking worker
#: processes and starting their brokers costs more than sharing so little work saves.
SMALL_INPUT_ROWS = 50_000


def choose_processes(ctx: RunContext) -> int:
    """Worker processes for a run when the user did not say: the cores (at most 4), or
    one for a small input."""
    from etl.runner import default_processes

    rows = ctx.run.params.get("source_rows")
    if isinstance(rows, int) and rows < SMALL_INPUT_ROWS:
        return 1
    return default_processes()


def _work_pending(ctx: RunContext, pending: Pending, *, processes: int, threads: int,
                  poll: float, on_progress: ProgressCallback | None,
                  results: ResultStore | None, counts: dict[int, int]) -> int:
    """Work `pending` in this process or in `processes` forked ones (started again, up to
    RESTARTS times, when some are killed); the dead letters left. `counts` gets the key
    counts of the shards a process loaded whole (`_key_counts`)."""
    if processes == 1:
        dead = _work(ctx, pending, threads=threads, poll=poll, on_progress=on_progress,
                     results=results)
        summarize_floods()  # as a worker process does when it ends
        counts.update(_key_counts(ctx))
        return dead
    dead = 0
    for restart in range(RESTARTS + 1):
        lost, killed, counted = _work_in_processes(
            ctx, pending, processes=processes, threads=threads, poll=poll,
            on_progress=on_progress, results=results)
        dead += lost
        counts.update(counted)
        pending = find_pending(ctx.state, ctx.run_id)
        if not killed or not pending.total or restart == RESTARTS or is_cancelled(
                ctx.state, ctx.run_id):
            break
        log.warning("%d worker process(es) killed: starting their %d unfinished batch "
                    "pipeline(s) again", killed, pending.total)
    return dead


def in_process(ctx: RunContext) -> None:
    """Set `ctx` up for steps that all run in this process (and its forks), as embedded
    mode runs them (the bench's profile pass does the same, to measure what a run does)."""
    ctx.staged_copies = False  # each batch's load runs in the process that cleaned it
    if isinstance(ctx.pipeline.sink, KeyAudit) and ctx.pipeline.key:  # processes load whole shards
        ctx.loaded_keys = LOADED_KEYS
    ctx.shard_frames = SHARD_FRAMES  # and clean whole shards: each converted to pandas once


def run_embedded(ctx: RunContext, *, threads: int | None = None, processes: int | None = 1,
                 poll: float = 0.2, on_progress: ProgressCallback | None = None,
                 results: ResultStore | None = None) -> WorkOutcome:
    """Work the run's pending batches to the end (or until only failures remain); with a
    result store, record every message there. `processes` None: `choose_processes`;
    `threads` None: one per process when there are several (each process then has a core,
    and a second thread mostly contends for its GIL), else two (a thread's file writes
    overlap the other's work). Completing the run is the runner's."""
    started = time.perf_counter()
    in_process(ctx)
    counts: dict[int, int] = {}
    pending = find_pending(ctx.state, ctx.run_id)
    log.info("run %s: %d fetch, %d clean, %d load pipelines to start", ctx.run_id,
             len(pending.fetch), len(pending.clean), len(pending.load))
    processes = max(1, min(processes or choose_processes(ctx),
                           len({s for s, _ in pending.fetch + pending.clean + pending.load})))
    threads = threads or (1 if processes > 1 else 2)
    dead = _work_pending(ctx, pending, processes=processes, threads=threads, poll=poll,
                         on_progress=on_progress, results=results, counts=counts)
    # Another process may work the same run (two triggers of one backfill window): the
    # batches it fetched are not followed here (a fetch done elsewhere hands on no next
    # batch), so this process's queue can drain while that work goes on. Work what is
    # still pending again (steps leased elsewhere wait their turn, then are settled as
    # duplicates) as long as someone makes progress; without any, stop as before.
    seen = ctx.state.list_checkpoints(ctx.run_id)
    while not dead and not all_loaded(seen, ctx.run.shards) and not is_cancelled(
            ctx.state, ctx.run_id):
        pending = find_pending(ctx.state, ctx.run_id)
        if not pending.total:
            break
        log.info("run %s: %d batch pipeline(s) still pending (worked elsewhere too?): "
                 "working them again", ctx.run_id, pending.total)
        dead = _work_pending(ctx, pending, processes=1, threads=threads, poll=poll,
                             on_progress=on_progress, results=results, counts=counts)
        now = ctx.state.list_checkpoints(ctx.run_id)
        if now == seen:
            break
        seen = now
    SHARD_FRAMES.clear()  # shards left half done (a cancel, a failure) are not kept
    checkpoints = ctx.state.list_checkpoints(ctx.run_id)
    if on_progress:
        on_progress(checkpoints)
    return WorkOutcome(completed=all_loaded(checkpoints, ctx.run.shards), dead_letters=dead,
                       elapsed=time.perf_counter() - started, checkpoints=checkpoints,
                       cancelled=is_cancelled(ctx.state, ctx.run_id), key_counts=counts)
