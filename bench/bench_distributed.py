"""Benchmark: distributed mode on RabbitMQ and Redis, and the per-message cost of our actors.

1. The demo pipeline (336,776 rows, 20 shards), and the 10x demo, worked by 2 `etl worker
   --preload ...` processes (2 threads each, the source parsed while they wait for work),
   timed from `etl run --fresh --wait` to completion, against the hand-written pandas script
   (bench/pandas_baseline.py) in the same run, alternating; medians and the ratio (pandas
   time / toolkit time). This is the `distributed` section of bench/bench_all.py (`make
   bench`), run from there.
2. No-op message throughput on each broker: N messages through a raw Dramatiq actor that does
   nothing, vs N messages through our load actor whose batch is already loaded (the dedup
   ledger read once, then remembered; the actor's wrapper and middleware run: the toolkit's
   fixed cost per duplicate message), both drained by one in-process Worker with 2 threads,
   alternated over --repeat rounds; messages/s and the median ratio (bench_all's `noop`
   section).

    python bench/bench_distributed.py [--repeat 5] [--messages 2000] [--brokers rabbitmq,redis]
                                      [--parts demo,noop] [--on demo,tenx]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
from dramatiq.middleware import Middleware  # noqa: E402

from etl.runtime.actors import declare_actors  # noqa: E402
from etl.brokers import open_broker, queues_of  # noqa: E402
from etl.core.config import load_settings  # noqa: E402
from etl.runtime.context import ContextCache, RunContext  # noqa: E402
import etl  # noqa: E402
from etl.stores import Stores  # noqa: E402
from etl.stores.objects import open_objects  # noqa: E402
from etl.pipeline import load_pipeline  # noqa: E402
from etl.stores.state import open_state  # noqa: E402

URLS = {"rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F", "redis": "redis://127.0.0.1:6379/0"}


def drop_queues(url: str, names: list[str]) -> None:
    """Delete the bench's queues with their delay and dead-letter queues."""
    broker = open_broker(url)
    queues = queues_of(broker)
    try:
        for name in names:
            queues.delete(name)
    finally:
        queues.close()
        broker.close()


class Counter(Middleware):
    """Counts processed messages (the brokers' own join() polls too coarsely to time this)."""

    def __init__(self) -> None:
        self.done = 0
        self.lock = threading.Lock()

    def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
        with self.lock:
            self.done += 1


def _drain(broker: dramatiq.Broker, queue: str, send: list[dramatiq.Message]) -> float:
    counter = Counter()
    broker.add_middleware(counter)
    for message in send:
        broker.enqueue(message)
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=2)
    started = time.perf_counter()
    worker.start()
    while counter.done < len(send):
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    worker.stop()
    return elapsed


def noop_throughput(url: str, messages: int, *, rounds: int = 1) -> list[tuple[float, float]]:
    """Per round, (raw Dramatiq messages/s, our actors' messages/s) on the broker at `url`.
    The two drains alternate, and which goes first alternates from round to round: a
    single pair swings with whatever else the machine does (0.87x to 1.29x on RabbitMQ
    in one afternoon)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ETL_DEMO_OUTPUT"] = str(work / "out")
        state = open_state(f"sqlite:///{work}/state.db")
        objects = open_objects(f"file://{work}/objects")
        demo = load_pipeline("demo").with_shards(2)
        embedded = dataclasses.replace(load_settings(), broker_url="stub://")
        outcome = etl.run(demo, spec="demo", fresh=True, stores=Stores(state, objects),
                          settings=embedded, processes=1, threads=2)
        assert outcome.completed  # every batch loaded
        run = state.get_run(outcome.run_id)
        assert run is not None
        context = RunContext.build(run, demo, state, objects)

        queue = f"bench-{uuid.uuid4().hex[:8]}"

        def noop(i: int) -> None:
            return None

        def raw_rate() -> float:
            broker = open_broker(url)
            raw = dramatiq.actor(noop, broker=broker, queue_name=f"{queue}-raw")
            try:
                return messages / _drain(broker, f"{queue}-raw",
                                         [raw.message(i) for i in range(messages)])
            finally:
                broker.close()

        def our_rate() -> float:
            broker = open_broker(url)
            contexts = ContextCache(load_settings())
            contexts.register(context)
            ours = declare_actors(broker, contexts, queue=queue)
            try:
                return messages / _drain(broker, queue, [ours.load.message(run.run_id, i % 2, 0)
                                                         for i in range(messages)])
            finally:
                broker.close()

        pairs = []
        try:
            for round_ in range(rounds):
                if round_ % 2:
                    mine, raw = our_rate(), raw_rate()
                else:
                    raw, mine = raw_rate(), our_rate()
                pairs.append((raw, mine))
        finally:
            state.close()
            drop_queues(url, [queue, f"{queue}-raw"])
        return pairs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    parser.add_argument("--parts", default="demo,noop", help="demo, noop or both")
    parser.add_argument("--on", default="demo,tenx", help="data sets of the demo part")
    args = parser.parse_args(argv)
    from bench import bench_all

    parts = set(args.parts.split(","))
    only = ["distributed"] if "demo" in parts else []
    bench_all.main(["--only", ",".join(only + (["noop"] if "noop" in parts else [])),
                    "--repeat", str(args.repeat), "--messages", str(args.messages),
                    "--brokers", args.brokers, "--distributed-on", args.on])


if __name__ == "__main__":
    main(sys.argv[1:])
