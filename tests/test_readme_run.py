"""The README's shell commands, run as a reader would run them.

tests/test_readme_commands.py checks that every `etl` line of the README parses; this module
runs them, each group in a fresh folder holding the reader's project as the README builds
it: `mypkg/pipelines.py` is the README's `# mypkg/pipelines.py` Python blocks (`orders`, and
`fixed` for the quarantine replay), and the file `orders` reads is generated (3,000 orders
with negative amounts, repeated keys and one unreadable line, so the quarantine holds rows
of three stages) and put where the README says: its `s3://` source and sink are buckets of
moto's S3 server (ETL_S3_ENDPOINT_URL), as a reader's would be on S3.

Every `etl` command line of the README's shell blocks runs in README order, once without
its `[optional]` parts and once with all of them, its placeholders filled in (RUN: the run
the line is about; JOB_ID: a task record of it; Q: the queue; ID: a message id), and must
end with the exit status the README gives it (0 unless PLAN says otherwise) and print no
traceback. The groups, one test each:

* embedded, the default settings (run, runs, status, describe --check, config, quarantine,
  backfill, results, ...);
* distributed, on Redis (a database and a queue of this test's own, whose keys are deleted
  after; skipped when Redis does not answer, failed under CI): `etl worker` gets `--burst`,
  so it ends once the queue is empty, and runs right after the `etl run` that enqueues its
  work, not before it;
* `etl serve`, on a free port: `/` and `/api/v1/pipelines` answer 200, Ctrl-C ends it.

Changed from the lines as written, for speed or for this machine: `--shards N` runs with 2,
`--port 8080` with a free port, the queues `etl` and `etl.orders` are the test's queue.
`make ...` lines are not run (they build virtualenvs; `make test` runs this very suite);
SKIPPED lists the other lines left out, with why. A README command line that is neither in
PLAN nor in SKIPPED fails the first test: the README cannot grow an untested command.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import free_port, port_open, service_missing
from tests.readme import PLACEHOLDER, README, ROOT, Command, project_file, readme_commands

ETL = [sys.executable, "-m", "cli.main"]
#: A Redis database of this module's own (the suite's other tests use 15 and 0).
REDIS_URL = "redis://127.0.0.1:6379/13"
#: A message id no dead letter has: no message dies in these runs, so the README's retry
#: of one message matches none (exit 0, "no dead letter matched").
NO_MESSAGE = "no-such-message"


@dataclass(frozen=True)
class Step:
    """How one README command line runs."""

    #: "embedded", "redis" or "serve": the test, and the settings, it runs in.
    group: str
    #: The exit status the README gives the line.
    status: int = 0
    #: The run RUN stands for: a name given by an earlier step's `names`.
    run: str | None = None
    #: The newest run, once this step's `setup` (else the line itself) ran, gets this name.
    names: str | None = None
    #: An `etl` command run first, to make the state the line is about.
    setup: tuple[str, ...] = ()
    #: Run right after this other README line (words after `etl`), not in README order.
    after: str | None = None
    #: What the reader types when the command asks.
    stdin: str | None = None
    #: Also run without its [optional] parts (a worker without --burst would not end).
    bare: bool = True
    #: Text the output of its first variant must show.
    shows: str = ""


#: Each README command line (its words after `etl`) that runs, and how.
PLAN: dict[str, Step] = {
    # Defining a pipeline
    "run -p mypkg.pipelines:orders --shards 20": Step("embedded"),
    "run -p mypkg.pipelines:orders --fresh": Step("embedded", names="orders"),
    "runs": Step("embedded"),
    "status": Step("embedded"),
    "checkpoints": Step("embedded"),
    "errors": Step("embedded"),
    "describe -p mypkg.pipelines:orders --check": Step("embedded", shows="check sink: ok"),
    "config": Step("embedded"),
    # Quarantine
    "quarantine list RUN [--stage cast] [--json]": Step("embedded", run="orders",
                                                        shows="negative amount"),
    "quarantine replay RUN -p mypkg.pipelines:fixed": Step("embedded", run="orders"),
    "quarantine list RUN --stage source": Step("embedded", run="orders",
                                              shows="expected 4 fields, got 5"),
    # (after the replay above this is generation 2: it takes the unreadable line generation
    # 1 left out, which `fixed`, with the same source options, reads no better)
    "quarantine replay RUN -p mypkg.pipelines:fixed --stage source": Step(
        "embedded", run="orders", shows="1 source line(s) could not be parsed"),
    # Distributed mode
    "worker --processes 2 --threads 2 [--preload mypkg.pipelines:orders] "
    "[--queue etl --queue etl.orders] [--burst]": Step("redis", after="run --shards 20",
                                                       bare=False),
    "run --shards 20": Step("redis", names="demo"),
    "run --shards 20 --wait": Step("redis", shows="nothing to load"),
    "queues [--queue Q ...]": Step("redis"),
    "dlq list [--run RUN] [--json]": Step("redis", run="demo"),
    "dlq retry [--run RUN] [--message-id ID]": Step("redis", run="demo"),
    "dlq purge [--run RUN]": Step("redis", run="demo", stdin="y\n"),
    "reconcile RUN [--dry-run] [--force]": Step("redis", run="demo"),
    # a run to stop: the one above is complete, and a completed run is not cancelled (2)
    "cancel RUN": Step("redis", setup=("run", "--fresh"), names="stopped", run="stopped"),
    "queues purge --run RUN": Step("redis", run="stopped", shows="purged"),
    # Run control
    "cancel RUN [--purge]": Step("redis", run="stopped", shows="cancelled already"),
    "run --run-id RUN": Step("redis", run="stopped", status=4, shows="cancelled"),
    "run --run-id RUN --resume": Step("redis", run="stopped"),
    "queues purge --run RUN [--queue Q]": Step("redis", run="stopped"),
    # etl serve
    "serve [--host 127.0.0.1] [--port 8080]": Step("serve", bare=False),
    # Backfills from cron (the crontab line runs its command, from this folder)
    "backfill --start 2013-03-01 --end 2013-04-01 [--shards 8] [-p mypkg.pipelines:orders]":
        Step("embedded"),
    r"backfill -p mypkg.pipelines:orders --start $(date -u -d yesterday +\%F) "
    r"--end $(date -u +\%F) >> /var/log/etl-backfill.log 2>&1": Step("embedded"),
    # Task results
    "results list --run RUN [--status failed] [--json]": Step("embedded", run="orders"),
    "results get JOB_ID": Step("embedded", run="orders"),
    "results stats [--json]": Step("embedded"),
    "results delete JOB_ID ...": Step("embedded", run="orders"),
    "results health [--json]": Step("embedded"),
    "results cleanup": Step("embedded"),
}

#: README command lines not run, and why.
SKIPPED: dict[str, str] = {
    "run ... --run-id orders-nov": "`...` stands for the lines above; a named run is "
                                   "`etl run --run-id RUN` of Run control",
    "run ... --processes 2 --threads 2": "`...` stands for the lines above; the embedded "
                                         "runs above use the default processes",
}


def _lines() -> list[Command]:
    """The README's shell-block `etl` lines, each once, in README order."""
    return list({c.words: c for c in reversed(readme_commands(inline=False))}.values())[::-1]


def _key(command: Command) -> str:
    return " ".join(command.words)


def _in_order(group: str) -> list[tuple[Command, Step]]:
    """The README lines of `group` in README order, a step with `after` moved behind its
    line."""
    steps = [(c, PLAN[_key(c)]) for c in _lines() if _key(c) in PLAN]
    mine = [(c, s) for c, s in steps if s.group == group and not s.after]
    for command, step in steps:
        if step.group == group and step.after:
            at = next(i for i, (c, _) in enumerate(mine) if _key(c) == step.after)
            mine.insert(at + 1, (command, step))
    return mine


def test_each_readme_command_line_is_run_or_skipped() -> None:
    # Given the `etl` lines of the README's shell blocks
    keys = [_key(c) for c in _lines()]
    # Then each is run (PLAN) or skipped with a reason (SKIPPED), not both, and neither
    # table names a line the README no longer has
    missing = [k for k in keys if k not in PLAN and k not in SKIPPED]
    assert not missing, f"README lines neither run nor skipped here: {missing}"
    assert not set(PLAN) & set(SKIPPED)
    stale = sorted((set(PLAN) | set(SKIPPED)) - set(keys))
    assert not stale, f"lines no longer in the README: {stale}"
    # and each `after` names a line of its own group
    for step in PLAN.values():
        assert step.group in ("embedded", "redis", "serve"), step
        assert step.after is None or PLAN[step.after].group == step.group, step


# --- the reader's project ---------------------------------------------------------------

PIPELINES = project_file("mypkg/pipelines.py")


def _orders_csv() -> bytes:
    """3,000 orders of November 2026, gzipped: every 300th amount negative (DropRows), a
    repeated order id every 500 (Dedupe) and a last line of five fields (unreadable)."""
    rnd = random.Random(13)
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(["order_id", "sku", "amount", "created_at"])
    for i in range(3000):
        out.writerow([i - 1 if i % 500 == 0 else i, f"  ab-{i % 50} ",
                      -5.0 if i % 300 == 0 else round(rnd.uniform(1, 500), 2),
                      f"2026-11-{1 + i % 30:02d}T{i % 24:02d}:00:00Z"])
    text.write("3001,ab-1,1.0,2026-11-02T00:00:00Z,extra\n")
    return gzip.compress(text.getvalue().encode())


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> str:
    """The buckets the README's pipelines name, on moto's S3 server, with the orders file
    at the source's URL; the endpoint."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    urls = re.findall(r"s3://([\w.-]+)/([^\"']*)", PIPELINES)
    for bucket in {b for b, _ in urls}:
        client.create_bucket(Bucket=bucket)
    source = re.search(r"FileSource\(\"s3://([\w.-]+)/([^\"]+)\"", PIPELINES)
    assert source, f"the README's orders pipeline reads no s3:// file:\n{PIPELINES}"
    client.put_object(Bucket=source.group(1), Key=source.group(2), Body=_orders_csv())
    return s3_endpoint


class Reader:
    """A reader's project folder and the `etl` commands run in it, with what RUN, JOB_ID,
    Q and ID stand for there."""

    def __init__(self, folder: Path, env: dict[str, str], queue: str = "etl") -> None:
        self.folder, self.env, self.queue = folder, env, queue
        (folder / "mypkg").mkdir()
        (folder / "mypkg" / "pipelines.py").write_text(PIPELINES, encoding="utf-8")
        self.runs: dict[str, str] = {}
        self.job: str | None = None

    def etl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ETL, *args], cwd=self.folder, env=self.env, text=True,
                              input=stdin or "", capture_output=True, timeout=300)

    def newest_run(self) -> str:
        done = self.etl("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["run"]["run_id"]

    def value(self, placeholder: str, step: Step) -> str:
        if placeholder == "RUN":
            assert step.run in self.runs, f"no run named {step.run!r} yet"
            return self.runs[step.run]
        if placeholder == "JOB_ID":
            return self.job_id(self.value("RUN", step))
        if placeholder == "Q":
            return self.queue
        if placeholder == "ID":
            return NO_MESSAGE
        raise AssertionError(f"no value for the README's placeholder {placeholder}")

    def job_id(self, run: str) -> str:
        """A task record of `run` (the same one for each JOB_ID line)."""
        if self.job is None:
            done = self.etl("results", "list", "--run", run, "--json")
            assert done.returncode == 0, done.stderr
            self.job = json.loads(done.stdout)[0]["job_id"]
        return self.job


def _variants(words: tuple[str, ...], step: Step) -> list[list[str]]:
    """The line without its [optional] parts (unless step.bare is false) and with all of
    them, brackets and `...` removed."""
    full: list[str] = []
    bare: list[str] = []
    optional = False
    for word in words:
        optional = optional or word.startswith("[")
        if word.strip("[]") != "...":
            full.append(word.strip("[]"))
            if not optional:
                bare.append(word)
        optional = optional and not word.endswith("]")
    return [bare, full] if step.bare and bare != full else [full]


def _filled(words: list[str], step: Step, reader: Reader, port: int) -> list[str]:
    """`words` as this machine runs them: placeholders filled in, 2 shards, the free port,
    the test's queue, `$(date ...)` evaluated and shell redirections dropped."""
    argv: list[str] = []
    skip = False
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if skip or word in (">", ">>", "2>&1"):
            skip = word in (">", ">>")
            continue
        if before == "--shards":
            word = "2"
        elif before == "--port":
            word = str(port)
        elif before == "--queue" and (word == "etl" or word.startswith("etl.")):
            word = reader.queue + word[3:]
        elif word.startswith("$("):  # cron's \% is %, then the shell substitutes it
            word = subprocess.run(["bash", "-c", f'printf %s "{word.replace(chr(92), "")}"'],
                                  capture_output=True, text=True, check=True).stdout
        elif PLACEHOLDER.match(word):
            word = reader.value(word, step)
        argv.append(word)
    return argv


def _check(done: subprocess.CompletedProcess[str], argv: list[str], step: Step,
           command: Command) -> str:
    output = done.stdout + done.stderr
    said = f"etl {' '.join(argv)} ({command.where}) exited {done.returncode}:\n{output[-3000:]}"
    assert done.returncode == step.status, said
    assert "Traceback" not in output, said
    return output


def _run_group(group: str, reader: Reader) -> None:
    """Run the README lines of `group` in order, each variant checked."""
    port = free_port()
    for command, step in _in_order(group):
        if step.setup:
            done = reader.etl(*step.setup)
            assert done.returncode == 0, done.stdout + done.stderr
            if step.names:
                reader.runs[step.names] = reader.newest_run()
        for n, words in enumerate(_variants(command.words, step)):
            argv = _filled(words, step, reader, port)
            if group == "serve":
                output = _serve(reader, argv, port, command)
            else:
                output = _check(reader.etl(*argv, stdin=step.stdin), argv, step, command)
            if n == 0 and step.shows:
                assert step.shows in output, f"etl {' '.join(argv)}: {output[-3000:]}"
        if step.names and not step.setup:
            reader.runs[step.names] = reader.newest_run()


def _serve(reader: Reader, argv: list[str], port: int, command: Command) -> str:
    """Start `etl serve`, ask its dashboard and API, stop it with Ctrl-C: its output."""
    log = reader.folder / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([*ETL, *argv], cwd=reader.folder, env=reader.env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while True:
                try:
                    home = client.get("/")
                    break
                except httpx.TransportError:
                    assert server.poll() is None and time.monotonic() < deadline, \
                        f"etl serve did not come up: {log.read_text()}"
                    time.sleep(0.1)
            pipelines = client.get("/api/v1/pipelines")
        assert home.status_code == 200, home.text
        assert pipelines.status_code == 200, pipelines.text
        assert "mypkg.pipelines:orders" in pipelines.json()["pipelines"]
        server.send_signal(signal.SIGINT)  # Ctrl-C, as uvicorn's banner says
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    output = log.read_text()
    done = subprocess.CompletedProcess(argv, server.returncode, output, "")
    return _check(done, argv, PLAN[_key(command)], command)


def _env(s3_endpoint: str, **settings: str) -> dict[str, str]:
    """The environment of a reader who set nothing but the S3 endpoint (and `settings`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.setdefault("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1"))
    env.update(PYTHONPATH=str(ROOT), ETL_S3_ENDPOINT_URL=s3_endpoint, **settings)
    return env


def test_the_readmes_embedded_commands_run(tmp_path: Path, s3: str) -> None:
    # Given the reader's project as the README builds it, and the default settings
    reader = Reader(tmp_path, _env(s3))
    # When each embedded README line runs, in README order
    # Then each ends with the status the README gives it, without a traceback
    _run_group("embedded", reader)


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """A queue of this test's own on REDIS_URL; its keys are deleted after."""
    if not port_open("127.0.0.1", 6379):
        service_missing("Redis on 127.0.0.1:6379", "port does not answer")
    import redis

    queue = f"readme-{uuid.uuid4().hex[:10]}"
    yield queue
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_the_readmes_distributed_commands_run_on_redis(tmp_path: Path, s3: str,
                                                        redis_queue: str) -> None:
    # Given the reader's project, a Redis broker and a queue of the test's own
    reader = Reader(tmp_path, _env(s3, ETL_BROKER_URL=REDIS_URL, ETL_QUEUE=redis_queue),
                    queue=redis_queue)
    # When each distributed and run-control line runs, a burst worker after the first run
    # Then each ends with the status the README gives it (4: a cancelled run), no traceback
    _run_group("redis", reader)


def test_the_readmes_etl_serve_answers(tmp_path: Path, s3: str) -> None:
    # Given the reader's project and the allow-list the README exports
    allow = re.search(r"export ETL_SERVE_PIPELINES=(\S+)", README)
    assert allow, "the README no longer exports ETL_SERVE_PIPELINES"
    reader = Reader(tmp_path, _env(s3, ETL_API_TOKEN="readme-token",
                                   ETL_SERVE_PIPELINES=allow.group(1)))
    # When `etl serve` starts as the README shows it, Then its dashboard and API answer and
    # Ctrl-C ends it with status 0
    _run_group("serve", reader)
