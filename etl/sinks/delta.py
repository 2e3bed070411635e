"""A Delta Lake table as a sink (local path, `file://` or `s3://bucket/prefix`), loaded
exactly once by Delta's own transaction log.

Every batch is one Delta commit, and what makes a second commit of the same batch harmless
depends on the write disposition:

* "merge" upserts by the pipeline's key. The batch is first reduced to one row per key (the
  greatest SEQ_COLUMN), then MERGEd: a matched row is updated only when the incoming
  sequence is greater (`s._etl_seq > t._etl_seq`), an unmatched key is inserted. The result
  is pandas' `drop_duplicates(key, keep="last")` over all rows in sequence order, whatever
  order the batches commit in; a batch merged again (a redelivery after a crash between the
  commit and the caller's ledger) changes nothing.
* "append" and "replace" add the batch with a Delta application transaction
  (`txn` action, app id `etl:<run>:<shard>:<batch>`, version 1) in the same commit as its
  files. Before writing, the sink asks the table whether that app id is already there
  (`DeltaTable.transaction_version`) and does nothing if it is. One app id per batch, not
  per shard: batches of a shard load in any order. "replace" drops the rows of older runs
  (sequence below the run's first) when the run finishes.

Several processes load into one table at once. Why no commit is lost or doubled:

* A commit either lands in the log or raises: delta-rs writes the next version's log file
  only if it does not exist yet (a local create-if-absent, an S3 conditional put).
* A commit that loses the race is checked by delta-rs against every commit that won since
  the snapshot it read. A merge read the files that may hold its keys (the batch is
  materialised, streamed_exec=False, so delta-rs prunes the target to the batch's key
  range and records that range as what it read): a file added in that range meanwhile (by
  its statistics, or any file without them) or a file it read and another commit removed
  is a conflict. An append carrying an app id that a winner also carries is a conflict
  ("concurrent transaction"). Anything else (appends, merges of other keys) is committed
  on top of the winners as it is, which is correct since it read nothing they changed.
* On a conflict (CommitFailedError) the sink reloads the table and runs the whole attempt
  again: it merges anew (the sequence guard makes a merged row win only over older ones),
  or finds its app id committed and stops. Jittered backoff, MAX_ATTEMPTS attempts, then
  DeltaConflict, which is not an EtlError, so the framework retries the batch later.
* Creating the table is a commit of version 0 with mode "error" and no commit retries: of
  two processes that both found no table, one creates it and the other fails, reloads and
  merges or appends like any later batch. (Left to its retries, delta-rs 1.6 commits the
  losing create as version 1 without any conflict check: its rows added blindly.)

The table gets the column SEQ_COLUMN (40-digit text). `read_all` leaves it out.

delta-rs 1.x commits to S3 with conditional puts (If-None-Match), which makes concurrent
writers safe without a locking provider; AWS_S3_ALLOW_UNSAFE_RENAME is deliberately not set,
as it would switch back to the legacy rename path, which is not.

The module holds the commit path; etl.sinks.delta_arrow shapes a batch for the table
(checks, Arrow, schema), etl.sinks.delta_storage resolves where the table is (local or S3,
storage options, credential errors).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from etl.core.errors import BatchError
from etl.core.faults import crash_point
from etl.core.urls import mask_url
from etl.sinks.base import (SEQ_COLUMN, BackfillAware, Reachable, Sequenced, SerialCommits,
                            Sink, check_disposition)
from etl.sinks.delta_arrow import (INSTALL_HINT, SEQ_LENGTH, conform, ident, load_deltalake,
                                   one_line, to_arrow, without_null_columns, writer_properties)
from etl.sinks.delta_storage import check_path, resolve_options, storage_error, table_uri

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

#: Attempts of one commit that keeps meeting concurrent commits, then DeltaConflict.
MAX_ATTEMPTS = 8
#: Backoff between attempts: BASE * 2**n seconds, at most CAP, times a jitter in [0.5, 1.5).
BACKOFF_BASE, BACKOFF_CAP = 0.05, 2.0
#: finish_run compacts the table when it holds more than this many files smaller than
#: SMALL_FILE bytes (each batch commits at least one file). Measured with delta-rs 1.6: a
#: commit costs ~10 ms plus ~0.07 ms per file in the table (100 files: +7 ms a batch, 500:
#: +35 ms), and compacting 336,776 rows costs ~0.3 s, about what appending them did.
COMPACT_FILES, SMALL_FILE = 100, 32 * 1024 * 1024

T = TypeVar("T")


class DeltaConflict(RuntimeError):
    """Concurrent commits kept winning for MAX_ATTEMPTS attempts: transient, the batch is
    retried later by the framework (on purpose not an EtlError, which would be permanent)."""


class DeltaSink(Sink, BackfillAware, Sequenced, SerialCommits, Reachable):
    """A Delta Lake table, loaded exactly once per batch (see the module docstring).

    `path`: a local path (plain or `file://`) or `s3://bucket/prefix`. `key`: the columns a
    merge upserts on (bound by the pipeline through `with_key` when not given).
    `partition_by`: partition columns, used when the sink creates the table.
    `storage_options`: delta-rs storage options; for S3 they are added to the ones built
    from the settings (an explicit option wins)."""

    def __init__(self, path: str, *, key: Sequence[str] | None = None,
                 write_disposition: str = "merge", partition_by: Sequence[str] | None = None,
                 storage_options: dict[str, str] | None = None) -> None:
        self.key = check_disposition("DeltaSink", write_disposition, key)
        self.write_disposition = write_disposition
        if isinstance(partition_by, str):
            raise ValueError(f"DeltaSink: partition_by must be a list of column names, not the "
                             f"string {partition_by!r}")
        self.partition_by = tuple(partition_by or ())
        self._s3 = check_path(path)
        self.path = path
        self.storage_options = dict(storage_options) if storage_options is not None else None
        self._options: dict[str, str] | None = None
        self._local = threading.local()  # each thread its own DeltaTable (they are not shared)

    # -- description and copies -----------------------------------------------------------

    def _masked_options(self) -> dict[str, str]:
        return {k: "***" for k in self.storage_options or {}}

    def __repr__(self) -> str:
        parts = [repr(mask_url(self.path))]
        if self.key:
            parts.append(f"key={list(self.key)!r}")
        parts.append(f"write_disposition={self.write_disposition!r}")
        if self.partition_by:
            parts.append(f"partition_by={list(self.partition_by)!r}")
        if self.storage_options is not None:
            parts.append(f"storage_options={self._masked_options()!r}")
        return f"DeltaSink({', '.join(parts)})"

    def describe(self) -> str:
        how = (f"merge on {', '.join(self.key) or '(no key yet)'}" if self.write_disposition == "merge"
               else self.write_disposition)
        extra = f", partitioned by {', '.join(self.partition_by)}" if self.partition_by else ""
        options = (", storage options " + ", ".join(f"{k}=***" for k in self.storage_options)
                   if self.storage_options else "")
        return f"delta table {mask_url(self.path)} ({how}{extra}{options})"

    def _copy(self, **changes: Any) -> "DeltaSink":
        args: dict[str, Any] = {"key": self.key, "write_disposition": self.write_disposition,
                                "partition_by": self.partition_by,
                                "storage_options": self.storage_options}
        args.update(changes)
        return DeltaSink(self.path, **args)

    def with_key(self, key: Sequence[str]) -> "DeltaSink":
        """The same table bound to `key` (a merge upserts on it)."""
        return self._copy(key=key)

    def for_backfill(self) -> "DeltaSink":
        """The sink a backfill or replay loads through: a merge stays a merge (the sequence
        decides), "replace" becomes "append" (other runs' rows are kept), "append" stays."""
        return self._copy(write_disposition="append") if self.write_disposition == "replace" else self

    def commit_scope(self) -> str | None:
        """Merges queue on the table (racing merges re-join the table on every lost race);
        appends do not conflict with each other and go at once."""
        return f"delta:{self.uri}" if self.write_disposition == "merge" else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local", None)  # a thread's open table does not travel
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # -- the table ------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """What delta-rs is given: an absolute local path, or the s3:// URL."""
        return table_uri(self.path, s3=self._s3)

    def options(self) -> dict[str, str]:
        """The storage options, resolved at first use (settings are read then, not at import)."""
        if self._options is None:
            self._options = resolve_options(self.storage_options, s3=self._s3)
        return self._options

    def reach(self) -> str:
        """On S3, the bucket answers with the storage options and credentials delta-rs would
        use; locally, the table's folder can be written. Nothing is written either way."""
        from etl.sinks.reach import bucket_answers, writable_folder

        if self._s3:
            return bucket_answers(self.path, self.options())
        return writable_folder(Path(self.uri))

    def _storage_error(self, exc: BaseException) -> BaseException:
        """A storage failure as what to raise (see delta_storage.storage_error)."""
        return storage_error(exc, path=self.path, s3=self._s3)

    def _table(self) -> DeltaTable | None:
        """This thread's view of the table brought up to date, or None when there is none."""
        dl = load_deltalake()
        cached = getattr(self._local, "table", None)
        try:
            if cached is not None and self._local.pid == os.getpid():
                cached.update_incremental()
                return cached
            table = dl.DeltaTable(self.uri, storage_options=self.options())
        except dl.exceptions.TableNotFoundError:
            self._forget()
            return None
        except (OSError, dl.exceptions.DeltaError) as exc:
            self._forget()
            raise self._storage_error(exc)
        self._local.table, self._local.pid = table, os.getpid()
        return table

    def _forget(self) -> None:
        self._local.table = None

    def _attempts(self, what: str, attempt: Callable[[DeltaTable | None], T]) -> T:
        """Run `attempt` on a fresh view of the table until it commits without conflict."""
        dl = load_deltalake()
        for number in range(1, MAX_ATTEMPTS + 1):
            table = self._table()
            try:
                return attempt(table)
            except _Conflict as exc:
                cause: BaseException = exc.__cause__ or exc
            except dl.exceptions.CommitFailedError as exc:
                cause = exc
            except (OSError, dl.exceptions.DeltaError) as exc:
                self._forget()
                raise self._storage_error(exc)
            self._forget()
            if number == MAX_ATTEMPTS:
                log.warning("%s: %s still conflicting after %d attempts: %s", self.path, what,
                            number, one_line(cause))
                raise DeltaConflict(f"DeltaSink {mask_url(self.path)}: {what}: concurrent commits "
                                    f"won {number} times; retry later ({one_line(cause)})") from cause
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (number - 1)) * random.uniform(0.5, 1.5)
            log.debug("%s: %s conflicted (attempt %d): %s; again in %.2f s", self.path, what,
                      number, one_line(cause), delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _create(self, data: pa.Table, *, app_id: str | None = None) -> None:
        """Commit version 0 with `data`; of two creators one loses, as a conflict.

        With no commit retries: delta-rs (1.6) handles a create that finds version 0 taken
        by committing it as version 1 without any conflict check, which would add the
        loser's rows blindly (keys twice) and its metadata over the winner's."""
        dl = load_deltalake()
        commit = dl.CommitProperties(
            max_commit_retries=0,
            app_transactions=[dl.Transaction(app_id, 1)] if app_id else None)
        crash_point("sink.before_commit")
        try:
            dl.write_deltalake(self.uri, data, mode="error", partition_by=list(self.partition_by) or None,
                               storage_options=self.options(), commit_properties=commit,
                               writer_properties=writer_properties())
        except dl.exceptions.CommitFailedError:
            raise
        except dl.exceptions.DeltaError as exc:
            if "already exists" in str(exc):
                raise _Conflict() from exc
            raise

    # -- loading --------------------------------------------------------------------------

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        """Commit one batch exactly once (see the module docstring); returns the batch's
        rows, also when it was committed before (the caller counts it once)."""
        where = f"run {run_id} shard {shard} batch {batch}"
        data = to_arrow(frame, key=self.key, partition_by=self.partition_by,
                        merge=self.write_disposition == "merge", where=where)
        if data.num_rows == 0:
            return 0
        if self.write_disposition == "merge":
            self._attempts(f"{where} merge", lambda table: self._merge(table, data, where))
        else:
            app_id = f"etl:{run_id}:{shard}:{batch}"
            self._attempts(f"{where} append", lambda table: self._append(table, data, app_id, where))
        return len(frame)

    def _merge(self, table: DeltaTable | None, data: pa.Table, where: str) -> None:
        if table is None:
            self._create(without_null_columns(data))
            log.debug("%s: %s created the table", self.path, where)
            return
        data, adds = conform(data, table, where=where)
        on = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in self.key)
        newer = f"s.{ident(SEQ_COLUMN)} > t.{ident(SEQ_COLUMN)}"
        dl = load_deltalake()
        crash_point("sink.before_commit")
        try:
            metrics = (table.merge(data, predicate=on, source_alias="s", target_alias="t",
                                   merge_schema=adds, writer_properties=writer_properties(),
                                   streamed_exec=False)
                       .when_matched_update_all(predicate=newer)
                       .when_not_matched_insert_all()
                       .execute())
        except dl.exceptions.SchemaMismatchError as exc:
            raise BatchError(f"{where}: the batch does not fit the Delta table: {one_line(exc)}") from exc
        log.debug("%s: %s merged: %s inserted, %s updated", self.path, where,
                  metrics.get("num_target_rows_inserted"), metrics.get("num_target_rows_updated"))

    def _append(self, table: DeltaTable | None, data: pa.Table, app_id: str, where: str) -> None:
        if table is None:
            self._create(without_null_columns(data), app_id=app_id)
            return
        if table.transaction_version(app_id) is not None:
            log.debug("%s: %s already committed (%s), nothing to do", self.path, where, app_id)
            return
        data, adds = conform(data, table, where=where)
        dl = load_deltalake()
        commit = dl.CommitProperties(app_transactions=[dl.Transaction(app_id, 1)])
        crash_point("sink.before_commit")
        try:
            dl.write_deltalake(table, data, mode="append", schema_mode="merge" if adds else None,
                               commit_properties=commit, writer_properties=writer_properties())
        except dl.exceptions.SchemaMismatchError as exc:
            raise BatchError(f"{where}: the batch does not fit the Delta table: {one_line(exc)}") from exc

    # -- the end of a run -----------------------------------------------------------------

    def finish_run(self, run_id: str, *, first_seq: str) -> None:
        """"replace": delete the rows of older runs (sequence below `first_seq`). All: compact
        the table when many small files piled up (one or more per batch): every later commit
        and every reader pays for each file. The rewrite changes no row (`dataChange` false:
        it conflicts with no reader, and app transactions stay), files are not deleted (no
        vacuum: time travel and running readers keep working), and a failed compaction is
        only logged."""
        if not (isinstance(first_seq, str) and len(first_seq) == SEQ_LENGTH and first_seq.isdigit()):
            raise ValueError(f"DeltaSink.finish_run: first_seq must be {SEQ_LENGTH} digits, "
                             f"not {first_seq!r}")
        if self.write_disposition == "replace":
            def delete(table: DeltaTable | None) -> int:
                if table is None:
                    return 0
                result = table.delete(f"{ident(SEQ_COLUMN)} < '{first_seq}'")
                return int(result.get("num_deleted_rows") or 0)

            deleted = self._attempts(f"run {run_id} replace", delete)
            if deleted:
                log.info("%s: run %s replaced %d row(s) of earlier runs", self.path, run_id, deleted)
        self._compact_if_fragmented(run_id)

    def _compact_if_fragmented(self, run_id: str) -> None:
        table = self._table()
        if table is None:
            return
        try:
            sizes = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
            small = sum(1 for s in sizes if s < SMALL_FILE)
            if small <= COMPACT_FILES:
                return
            metrics = table.optimize.compact()
            log.info("%s: run %s compacted %s file(s) into %s", self.path, run_id,
                     metrics.get("numFilesRemoved"), metrics.get("numFilesAdded"))
        except Exception as exc:  # noqa: BLE001 - maintenance: the run's rows are loaded already
            log.warning("%s: compaction after run %s skipped: %s", self.path, run_id, one_line(exc))

    def read_all(self) -> pd.DataFrame:
        """The table's rows without SEQ_COLUMN (an empty frame when there is no table yet)."""
        import pandas as pd

        table = self._table()
        if table is None:
            return pd.DataFrame()
        names = [f.name for f in table.schema().fields if f.name != SEQ_COLUMN]
        return table.to_pyarrow_table(columns=names).to_pandas()


class _Conflict(Exception):
    """Another writer got there first (it created the table): reload and try again."""


__all__ = ["DeltaConflict", "DeltaSink", "INSTALL_HINT"]
