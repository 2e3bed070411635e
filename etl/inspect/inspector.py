"""Read-only inspection of runs for notebooks and people: what `etl status`, `etl
checkpoints` and `etl errors` print, as pandas DataFrames, plus what the CLI does not show
(the dedup ledger per batch, quarantined rows, the raw payload behind a batch).

    from etl.inspect import Inspector

    ins = Inspector.from_settings()      # the same settings `etl` would use here
    ins.runs()                           # runs, newest first
    ins.shards()                         # per-shard progress of the newest run
    ins.raw_batch(None, shard=0, batch=0)  # the rows one batch was cut into, sha256-checked

Everything goes through the project's own interfaces (settings, `open_state`,
`open_objects`, `open_results`, the StateStore and ObjectStore methods, the object keys of
etl.core.names), so the same notebook works on the embedded SQLite/file defaults and on MongoDB/S3.
Nothing here writes: an inspector never changes a run, and it refuses to open a SQLite
state store that does not exist rather than create an empty one and show "no runs".

`run_id=None` means the newest run, as for `etl status`. URLs are shown with passwords
masked.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pandas as pd

from etl.core.config import load_settings
from etl.core.errors import BatchError, ConfigError, EtlError, ObjectNotFound
from etl.inspect.tables import (ERROR_COLUMNS, LEDGER_STAGES, PAYLOAD_COLUMNS, RUN_COLUMNS,
                                SHARD_COLUMNS, TASK_COLUMNS, share_done, shown_error,
                                table_of)
from etl.core.names import quarantine_key
from etl.stores import open_objects, open_results, open_state, results_off
from etl.stores.objects import ObjectStore
from etl.core.parquet import from_parquet_bytes
from etl.runtime.raw import is_pointer, recut
from etl.runtime.quarantine import read as read_quarantine
from etl.inspect.history import run_line, took_text
from etl.inspect.project import (Backend, anchored, configured_backends, find_project_dir,
                         require_sqlite_file)
from etl.core.names import task_fingerprint
from etl.core.statuses import ShardStatus
from etl.stores.state import RawPayload, RunRecord, StateStore
from etl.core.urls import mask_secrets, mask_url

if TYPE_CHECKING:
    from results import ResultStore

log = logging.getLogger(__name__)


class PayloadMismatch(BatchError):
    """A raw payload's bytes do not match the sha256 (or size) its RawPayload pointer
    recorded: the object was overwritten or corrupted after the batch was fetched."""


class Inspector:
    """Read-only views of one state store, its object store and (optionally) its result
    store, as DataFrames.

    Build one with `from_settings()` (what `etl` uses in a directory) or `from_urls(...)`, or
    hand it open stores. Close it (or use it as a context manager) when done.
    """

    def __init__(self, state: StateStore, objects: ObjectStore, *,
                 results: "ResultStore | None" = None, results_url: str | None = None,
                 backends: list[Backend] | None = None) -> None:
        self.state = state
        self.objects = objects
        self._results = results
        self._results_url = results_url
        self._backends = backends or [
            Backend("state_url", state.url, "argument"),
            Backend("objects_url", objects.url, "argument"),
            Backend("results_url", mask_url(results_url or getattr(results, "url", "") or "-"),
                    "argument"),
        ]

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_urls(cls, state_url: str, objects_url: str, results_url: str | None = None,
                  *, base: str | Path | None = None) -> "Inspector":
        """Open the stores at these URLs (relative SQLite / file paths are taken from
        `base`, default the current directory). The result store opens on first use."""
        root = Path(base).resolve() if base is not None else Path.cwd()
        state_url = anchored(state_url, root)
        objects_url = anchored(objects_url, root, plain_path_ok=True)
        results_url = anchored(results_url, root) if not results_off(results_url) else None
        require_sqlite_file(state_url, "state store",
                             "run `etl run` there first, or point ETL_STATE_URL (or "
                             "state_url in etl.toml) at the run's state")
        return cls(open_state(state_url), open_objects(objects_url), results_url=results_url)

    @classmethod
    def from_settings(cls, project_dir: str | Path | None = None, *,
                      search_parents: bool = True) -> "Inspector":
        """The stores `etl` would use in `project_dir`: settings from the environment
        (ETL_STATE_URL, ETL_OBJECTS_URL, ETL_RESULTS_URL), then `etl.toml`, then the `[etl]`
        section of setup.cfg, then the embedded defaults (`.etl/` there).

        Without `project_dir`, the current directory, or with `search_parents` its nearest
        parent holding `etl.toml` or `.etl/` (see `find_project_dir`)."""
        if project_dir is not None:
            root = Path(project_dir).resolve()
        elif search_parents:
            root = find_project_dir()
        else:
            root = Path.cwd().resolve()
        conf = load_settings(cwd=root)
        inspector = cls.from_urls(conf.state_url, conf.objects_url, conf.results_url, base=root)
        inspector._backends = configured_backends(conf)
        return inspector

    def close(self) -> None:
        """Close the stores this inspector opened."""
        self.state.close()
        if self._results is not None:
            self._results.close()

    def __enter__(self) -> "Inspector":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        urls = ", ".join(f"{b.setting}={b.url!r}" for b in self._backends)
        return f"Inspector({urls})"

    def backends(self) -> pd.DataFrame:
        """The stores in use, URLs with passwords masked, and where each setting came from."""
        return table_of(({"setting": b.setting, "url": b.url, "from": b.source}
                       for b in self._backends), ["setting", "url", "from"])

    # -- runs ----------------------------------------------------------------------------
    def run(self, run_id: str | None = None) -> RunRecord:
        """The run `run_id`, or the newest run; ConfigError naming the store if none."""
        if run_id is None:
            runs = self.state.list_runs(limit=1)
            if not runs:
                raise ConfigError(f"no runs in {self.state.url}; start one with `etl run`")
            return runs[0]
        run = self.state.get_run(run_id)
        if run is None:
            raise ConfigError(f"run {run_id!r} not found in {self.state.url}")
        return run

    def runs(self, *, pipeline: str | None = None, limit: int = 50) -> pd.DataFrame:
        """Runs newest first: id, pipeline, shard plan, status, batch size, source rows,
        rows loaded and quarantined, and the seconds it took (None while it runs), as
        `etl runs` shows them."""
        rows = []
        for r in self.state.list_runs(pipeline=pipeline, limit=limit):
            line = run_line(self.state, r)
            rows.append({"run_id": r.run_id, "pipeline": r.pipeline, "plan": r.plan,
                         "shards": r.shards, "status": r.status,
                         "batch_size": r.params.get("batch_size"),
                         "source_rows": r.params.get("source_rows"),
                         "rows_loaded": line.rows_loaded,
                         "rows_quarantined": line.rows_quarantined,
                         "took_seconds": line.took_seconds,
                         "created_at": r.created_at, "updated_at": r.updated_at})
        return table_of(rows, RUN_COLUMNS)

    def summary(self, run_id: str | None = None) -> dict[str, Any]:
        """Totals of one run: rows in, loaded and quarantined (rows in = loaded +
        quarantined once complete), batches, shards done and failed, dedup ledger size."""
        run = self.run(run_id)
        checkpoints = self.state.list_checkpoints(run.run_id)
        counters = ("rows_fetched", "rows_cleaned", "rows_quarantined", "rows_loaded",
                    "batches_fetched", "batches_cleaned", "batches_loaded")
        result: dict[str, Any] = {"run_id": run.run_id, "pipeline": run.pipeline,
                                  "plan": run.plan, "status": run.status,
                                  "source_rows": run.params.get("source_rows")}
        result.update({name: sum(getattr(c, name) for c in checkpoints) for name in counters})
        result["shards"] = len(checkpoints)
        result["shards_done"] = sum(c.complete for c in checkpoints)
        result["shards_failed"] = sum(c.status == ShardStatus.FAILED and not c.complete for c in checkpoints)
        result["dedup_entries"] = self.state.count_done(run.run_id)
        return result

    # -- checkpoints -----------------------------------------------------------------------
    def shards(self, run_id: str | None = None) -> pd.DataFrame:
        """Per-shard progress (TaskCheckpoint) of one run, one row per shard: status ("done"
        once every fetched batch is loaded), cursor (last key read), batches and rows per
        stage, estimated share done (see `share_done`), last update and, for a shard not done, the
        cause of its last error (`shown_error`)."""
        run = self.run(run_id)
        checkpoints = self.state.list_checkpoints(run.run_id)
        source_rows = run.params.get("source_rows")
        expected = source_rows / run.shards if source_rows and run.shards else None
        return table_of(({"shard": c.shard, "status": ShardStatus.DONE if c.complete else c.status,
                        "cursor": c.cursor, "fetch_done": c.fetch_done,
                        "batches_fetched": c.batches_fetched,
                        "batches_cleaned": c.batches_cleaned,
                        "batches_loaded": c.batches_loaded, "rows_fetched": c.rows_fetched,
                        "rows_cleaned": c.rows_cleaned, "rows_quarantined": c.rows_quarantined,
                        "rows_loaded": c.rows_loaded, "share_done": share_done(c, expected),
                        "updated_at": c.updated_at,
                        "last_error": shown_error(c)}
                       for c in checkpoints), SHARD_COLUMNS)

    # -- dedup ledger ----------------------------------------------------------------------
    def dedup_size(self, run_id: str | None = None) -> int:
        """Entries of the run in the dedup ledger (TaskDedup): one per batch and stage whose
        effect is complete, so 3 x batches for a finished run."""
        return self.state.count_done(self.run(run_id).run_id)

    def dedup(self, run_id: str | None = None) -> pd.DataFrame:
        """One row per fetched batch: whether the ledger holds its fetch, clean and load
        fingerprints. A False is a step `etl run` would send again on resume."""
        run = self.run(run_id)
        rows = []
        for p in self.state.list_payloads(run.run_id):
            row: dict[str, Any] = {"shard": p.shard, "batch": p.batch}
            for stage in LEDGER_STAGES:
                row[stage] = self.state.is_done(task_fingerprint(stage, run.run_id, p.shard, p.batch))
            rows.append(row)
        return table_of(rows, ["shard", "batch", *LEDGER_STAGES])

    # -- raw payloads ----------------------------------------------------------------------
    def payloads(self, run_id: str | None = None, shard: int | None = None) -> pd.DataFrame:
        """RawPayload pointers of the run (or of one shard), by shard and batch: rows, bytes,
        sha256, the cursor range the batch covers and its object key."""
        run = self.run(run_id)
        return table_of(({"shard": p.shard, "batch": p.batch, "rows": p.rows, "bytes": p.bytes,
                        "sha256": p.sha256, "cursor_start": p.cursor_start,
                        "cursor_end": p.cursor_end, "key": p.key, "created_at": p.created_at}
                       for p in self.state.list_payloads(run.run_id, _shard(shard))),
                      PAYLOAD_COLUMNS)

    def payload(self, run_id: str | None, shard: int, batch: int) -> RawPayload:
        """The RawPayload pointer of one batch; ConfigError if the batch was never fetched."""
        run = self.run(run_id)
        shard, batch = int(shard), int(batch)  # numpy ints from a DataFrame row match nothing
        payload = self.state.get_payload(run.run_id, shard, batch)
        if payload is None:
            raise ConfigError(f"run {run.run_id} shard {shard} batch {batch} has no RawPayload "
                              f"pointer in {self.state.url} (not fetched)")
        return payload

    def raw_batch(self, run_id: str | None, shard: int, batch: int) -> pd.DataFrame:
        """The raw rows of one fetched batch. A copy is read from the object store by its
        pointer, after checking the bytes against the pointer's size and sha256
        (PayloadMismatch if they differ: the object was overwritten or corrupted since the
        fetch); a batch landed as a pointer into its source is cut again from the source of
        the run's pipeline (BatchError if the source changed since)."""
        payload = self.payload(run_id, shard, batch)
        shard, batch = payload.shard, payload.batch
        if is_pointer(payload):
            return self._recut(payload).to_pandas()
        where = (f"run {payload.run_id} shard {shard} batch {batch} "
                 f"(object {self.objects.uri(payload.key)})")
        try:
            data = self.objects.get_bytes(payload.key)
        except ObjectNotFound:
            raise BatchError(f"{where}: raw payload object is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != payload.sha256 or len(data) != payload.bytes:
            raise PayloadMismatch(
                f"{where}: content does not match its RawPayload pointer (sha256 {digest[:12]}"
                f"..., {len(data):,} bytes; recorded {payload.sha256[:12]}..., "
                f"{payload.bytes:,} bytes)")
        return from_parquet_bytes(data)

    def _recut(self, payload: RawPayload) -> Any:
        """A pointer payload's rows, cut again from the source of its run's pipeline."""
        from etl.pipeline import load_pipeline
        from etl.runtime.context import RunContext

        run = self.run(payload.run_id)
        where = f"run {run.run_id} shard {payload.shard} batch {payload.batch}"
        spec = run.params.get("pipeline_spec")
        if not spec:
            raise BatchError(f"{where}: the batch is a pointer into its source, and the run "
                             "does not record its pipeline, so it cannot be cut again")
        ctx = RunContext.build(run, load_pipeline(spec), self.state, self.objects)
        return recut(ctx.pipeline.source, ctx.plan, payload, where=where)

    # -- quarantine ------------------------------------------------------------------------
    def quarantine(self, run_id: str | None = None, *, shard: int | None = None,
                   limit: int | None = None) -> pd.DataFrame:
        """Quarantined rows of the run (or one shard), read from where each fetched batch's
        clean kept them (etl.runtime.quarantine: the state store, or a Parquet object):
        `shard`, `batch`, `_reason` (why), `_stage` (which stage rejected it), then the row's
        own values. At most `limit` rows when given."""
        run = self.run(run_id)
        first = quarantine_key(run.run_id, 0, 0)  # runs/<run>/quarantine/shard=.../batch=...
        present = set(self.objects.list(posixpath.dirname(posixpath.dirname(first)) + "/"))
        frames: list[pd.DataFrame] = []
        count = 0
        for p in self.state.list_payloads(run.run_id, _shard(shard)):
            frame = read_quarantine(self.state, self.objects, run.run_id, p.shard, p.batch,
                                    objects_present=present)
            if frame is None:
                continue  # not cleaned yet, or nothing rejected
            frame.insert(0, "batch", p.batch)
            frame.insert(0, "shard", p.shard)
            frames.append(frame)
            count += len(frame)
            if limit is not None and count >= limit:
                break
        if not frames:
            return table_of([], ["shard", "batch", "_reason", "_stage"])
        result = pd.concat(frames, ignore_index=True)
        return result.head(limit) if limit is not None else result

    def quarantine_reasons(self, run_id: str | None = None) -> pd.DataFrame:
        """Quarantined rows of the run counted by stage and reason, most rows first: every
        quarantine object is read (`quarantine` with no limit)."""
        rows = self.quarantine(run_id)
        if rows.empty:
            return table_of([], ["stage", "reason", "rows"])
        counts = (rows.groupby(["_stage", "_reason"], dropna=False).size()
                  .sort_values(ascending=False).rename("rows").reset_index())
        return counts.rename(columns={"_stage": "stage", "_reason": "reason"})

    def glance(self, run_id: str | None = None) -> str:
        """The run in two lines, for a person: its status and time, and where its rows went
        (loaded, quarantined and why, still on their way), shards done and errors."""
        run = self.run(run_id)
        totals = self.summary(run.run_id)
        line = run_line(self.state, run)
        rows_in = totals["rows_fetched"]
        share = (lambda n: f" ({n / rows_in:.1%})") if rows_in else (lambda n: "")
        reasons = self.quarantine_reasons(run.run_id) if totals["rows_quarantined"] else None
        why = ""
        if reasons is not None and len(reasons):
            top = reasons.iloc[0]
            why = (f", most for {top['reason']!r} ({top['stage']}, {int(top['rows']):,})"
                   + (f" and {len(reasons) - 1} other reason(s)" if len(reasons) > 1 else ""))
        pending = rows_in - totals["rows_loaded"] - totals["rows_quarantined"]
        errors = len(self.state.list_errors(run.run_id, limit=10_000))
        took = "" if line.took_seconds is None else f" in {took_text(line.took_seconds)}"
        return (f"run {run.run_id} ({run.pipeline}) {run.status}{took}: {rows_in:,} rows in, "
                f"{totals['rows_loaded']:,} loaded{share(totals['rows_loaded'])}, "
                f"{totals['rows_quarantined']:,} quarantined{share(totals['rows_quarantined'])}"
                f"{why}" + (f", {pending:,} on their way" if pending > 0 else "") + "\n"
                f"shards done {totals['shards_done']}/{totals['shards']}"
                + (f", failed {totals['shards_failed']}" if totals["shards_failed"] else "")
                + f"; {errors} error(s) in TaskErrorLog")

    # -- errors ----------------------------------------------------------------------------
    def errors(self, run_id: str | None = None, *, limit: int = 100) -> pd.DataFrame:
        """TaskErrorLog entries of the run, newest first: stage, shard, batch, error type and
        message, traceback and context (URL passwords masked)."""
        run = self.run(run_id)
        return table_of(({"at": e.at, "run_id": e.run_id, "stage": e.stage, "shard": e.shard,
                        "batch": e.batch, "error_type": e.error_type,
                        "message": mask_url(e.message), "traceback": mask_url(e.traceback),
                        "context": mask_secrets(e.context)}
                       for e in self.state.list_errors(run.run_id, limit=limit)), ERROR_COLUMNS)

    # -- task results ----------------------------------------------------------------------
    def results(self) -> "ResultStore":
        """The result store, opened on first use; EtlError if it cannot be opened."""
        if self._results is None:
            if not self._results_url:
                raise ConfigError("no result store configured (results_url)")
            require_sqlite_file(self._results_url, "result store",
                                 "the run recorded no task results there")
            self._results = open_results(self._results_url)  # an outage: one clear line
        return self._results

    def tasks(self, run_id: str | None = None, *, status: str | None = None,
              limit: int = 1000) -> pd.DataFrame:
        """The run's task records from the result store, newest first: function, stage,
        status, shard and batch (from the message's arguments), result, error, retries,
        worker and duration. Records expire (a day by default), so old runs show none."""
        run = self.run(run_id)
        store = self.results()
        try:
            jobs = store.list(run_id=run.run_id, status=status, limit=limit)
        except EtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - an outage, said in one line
            raise EtlError(f"cannot read the result store {store.url}: "
                           f"{type(exc).__name__}: {mask_url(str(exc))}") from exc
        rows = []
        for job in jobs:
            args = list(job.args)
            rows.append({"job_id": job.job_id, "function": job.function, "stage": job.stage,
                         "status": job.status,
                         "shard": args[1] if len(args) > 2 else None,
                         "batch": args[2] if len(args) > 2 else None,
                         "result": mask_secrets(job.result),
                         "error": mask_url(job.error) if job.error else None,
                         "error_type": job.error_type, "retry_count": job.retry_count,
                         "worker_id": job.worker_id, "duration": job.duration,
                         "created_at": job.created_at, "completed_at": job.completed_at})
        return table_of(rows, TASK_COLUMNS)


def _shard(shard: int | None) -> int | None:
    return None if shard is None else int(shard)


__all__ = ["LEDGER_STAGES", "Inspector", "PayloadMismatch", "find_project_dir", "share_done"]
