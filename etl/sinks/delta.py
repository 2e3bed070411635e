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

S3 without storage_options takes the endpoint from the settings (ETL_S3_ENDPOINT_URL, with
AWS_ALLOW_HTTP for an http:// endpoint); delta-rs reads AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE... from the environment itself. delta-rs 1.x
commits to S3 with conditional puts (If-None-Match), which makes concurrent writers safe
without a locking provider; AWS_S3_ALLOW_UNSAFE_RENAME is deliberately not set, as it would
switch back to the legacy rename path, which is not.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from etl.core.errors import BatchError, ConfigError
from etl.core.faults import crash_point
from etl.core.urls import mask_url, scheme_of
from etl.sinks.base import (SEQ_COLUMN, BackfillAware, Sequenced, SerialCommits, Sink,
                            check_disposition)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

INSTALL_HINT = "DeltaSink needs the deltalake package: pip install 'dramatiq-etl[delta]'"

#: Attempts of one commit that keeps meeting concurrent commits, then DeltaConflict.
MAX_ATTEMPTS = 8
#: Backoff between attempts: BASE * 2**n seconds, at most CAP, times a jitter in [0.5, 1.5).
BACKOFF_BASE, BACKOFF_CAP = 0.05, 2.0
#: finish_run compacts the table when it holds more than this many files smaller than
#: SMALL_FILE bytes (each batch commits at least one file). Measured with delta-rs 1.6: a
#: commit costs ~10 ms plus ~0.07 ms per file in the table (100 files: +7 ms a batch, 500:
#: +35 ms), and compacting 336,776 rows costs ~0.3 s, about what appending them did.
COMPACT_FILES, SMALL_FILE = 100, 32 * 1024 * 1024

_SEQ_LENGTH = 40
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CREDENTIAL_HINTS = ("169.254.169.254", "credential", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken", "AccessDenied", "403 Forbidden")

T = TypeVar("T")


class DeltaConflict(RuntimeError):
    """Concurrent commits kept winning for MAX_ATTEMPTS attempts: transient, the batch is
    retried later by the framework (on purpose not an EtlError, which would be permanent)."""


def _deltalake() -> Any:
    """The deltalake package, or ConfigError (one line) when it is not installed."""
    try:
        import deltalake
        import deltalake.exceptions  # noqa: F401 - used through the package
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return deltalake


def _writer_properties() -> Any:
    """Parquet settings of the files the sink writes: the defaults, except SEQ_COLUMN, whose
    values are unique (a dictionary is built for nothing) and share long prefixes (run,
    shard, batch): DELTA_BYTE_ARRAY stores those once per page. ~5% less time per batch,
    same size; every Parquet reader decodes it."""
    dl = _deltalake()
    return dl.WriterProperties(column_properties={SEQ_COLUMN: dl.ColumnProperties(
        dictionary_enabled=False, encoding="DELTA_BYTE_ARRAY")})


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (delta-rs nests causes over lines with colour codes)."""
    text = _ANSI.sub("", str(exc))
    return " ".join(part.strip(" ↳") for part in text.splitlines() if part.strip(" ↳")) or repr(exc)


def _ident(name: str) -> str:
    """A column name quoted for a Delta predicate (keeps case and odd characters)."""
    return "`" + name.replace("`", "``") + "`"


def _family(t: pa.DataType) -> str:
    """The kind of values a type holds: types of one family can be cast into each other
    (delta-rs does so on write), types of two families cannot be merged into one column."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    checks = (("null", pa.types.is_null), ("boolean", pa.types.is_boolean),
              ("number", lambda x: pa.types.is_integer(x) or pa.types.is_floating(x)
               or pa.types.is_decimal(x)),
              ("text", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)
               or pa.types.is_string_view(x)),
              ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)
               or pa.types.is_fixed_size_binary(x) or pa.types.is_binary_view(x)),
              ("time", lambda x: pa.types.is_timestamp(x) or pa.types.is_date(x)),
              ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x)
               or pa.types.is_list_view(x) or pa.types.is_fixed_size_list(x)))
    for name, check in checks:
        if check(t):
            return name
    return str(t)


class DeltaSink(Sink, BackfillAware, Sequenced, SerialCommits):
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
        scheme = scheme_of(path)
        if scheme not in ("", "file", "s3", "s3a"):
            raise ValueError(f"DeltaSink: path must be a local path, file:// or s3://bucket/prefix, "
                             f"not {mask_url(path)!r}")
        if scheme in ("s3", "s3a") and not path.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(f"DeltaSink: {path!r} names no bucket")
        self.path = path
        self.storage_options = dict(storage_options) if storage_options is not None else None
        self._s3 = scheme in ("s3", "s3a")
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
        if self._s3:
            return self.path
        local = self.path[len("file://"):] if self.path.startswith("file://") else self.path
        return os.path.abspath(local)

    def options(self) -> dict[str, str]:
        """The storage options, resolved at first use (settings are read then, not at import)."""
        if self._options is None:
            options: dict[str, str] = {}
            if self._s3:
                from etl.core.config import load_settings

                endpoint = load_settings().s3_endpoint_url
                if endpoint:
                    options["AWS_ENDPOINT_URL"] = endpoint
                    if endpoint.startswith("http://"):
                        options["AWS_ALLOW_HTTP"] = "true"
            options.update(self.storage_options or {})
            self._options = options
        return self._options

    def _storage_error(self, exc: BaseException) -> BaseException:
        """A storage failure, as ConfigError (one line, caused by `exc`) when it says the
        credentials are missing or refused; else `exc` itself (transient: retried)."""
        text = _one_line(exc)
        if self._s3 and any(h.lower() in text.lower() for h in _CREDENTIAL_HINTS):
            error = ConfigError(
                f"DeltaSink {mask_url(self.path)}: no usable AWS credentials (set AWS_ACCESS_KEY_ID "
                f"and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or pass storage_options): "
                f"{mask_url(text)[:300]}")
            error.__cause__ = exc
            return error
        return exc

    def _table(self) -> DeltaTable | None:
        """This thread's view of the table brought up to date, or None when there is none."""
        dl = _deltalake()
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
        dl = _deltalake()
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
                            number, _one_line(cause))
                raise DeltaConflict(f"DeltaSink {mask_url(self.path)}: {what}: concurrent commits "
                                    f"won {number} times; retry later ({_one_line(cause)})") from cause
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (number - 1)) * random.uniform(0.5, 1.5)
            log.debug("%s: %s conflicted (attempt %d): %s; again in %.2f s", self.path, what,
                      number, _one_line(cause), delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _create(self, data: pa.Table, *, app_id: str | None = None) -> None:
        """Commit version 0 with `data`; of two creators one loses, as a conflict.

        With no commit retries: delta-rs (1.6) handles a create that finds version 0 taken
        by committing it as version 1 without any conflict check, which would add the
        loser's rows blindly (keys twice) and its metadata over the winner's."""
        dl = _deltalake()
        commit = dl.CommitProperties(
            max_commit_retries=0,
            app_transactions=[dl.Transaction(app_id, 1)] if app_id else None)
        crash_point("sink.before_commit")
        try:
            dl.write_deltalake(self.uri, data, mode="error", partition_by=list(self.partition_by) or None,
                               storage_options=self.options(), commit_properties=commit,
                               writer_properties=_writer_properties())
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
        data = self._arrow(frame, where)
        if data.num_rows == 0:
            return 0
        if self.write_disposition == "merge":
            self._attempts(f"{where} merge", lambda table: self._merge(table, data, where))
        else:
            app_id = f"etl:{run_id}:{shard}:{batch}"
            self._attempts(f"{where} append", lambda table: self._append(table, data, app_id, where))
        return len(frame)

    def _arrow(self, frame: pd.DataFrame, where: str) -> pa.Table:
        """The batch as Arrow: sequence checked, and for a merge one row per key (the
        greatest sequence)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if SEQ_COLUMN not in frame.columns:
            raise BatchError(f"{where}: the batch has no {SEQ_COLUMN} column; DeltaSink is "
                             "loaded by the runtime, which adds it")
        needed = [c for c in (*self.key, *self.partition_by) if c not in frame.columns]
        if self.write_disposition == "merge" and not self.key:
            raise BatchError(f"{where}: DeltaSink merge needs a key; give key= or bind it with "
                             "with_key (a Pipeline does)")
        if needed:
            raise BatchError(f"{where}: the batch lacks the column(s) {', '.join(needed)} "
                             f"the Delta table is keyed or partitioned on")
        if self.write_disposition == "merge":
            nulls = [k for k in self.key if frame[k].isna().any()]
            if nulls:
                raise BatchError(f"{where}: key column(s) {', '.join(nulls)} hold nulls; a merge "
                                 "cannot match a row without its key")
            if frame.duplicated(list(self.key)).any():
                frame = frame.sort_values(SEQ_COLUMN, kind="stable").drop_duplicates(
                    list(self.key), keep="last")
        try:  # one thread: a pool per batch costs more than it saves on 50,000 rows
            data = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise BatchError(f"{where}: cannot convert the batch for Delta: {_one_line(exc)}") from exc
        data = data.replace_schema_metadata(None)
        seq = data.column(SEQ_COLUMN)
        if _family(seq.type) != "text":
            raise BatchError(f"{where}: {SEQ_COLUMN} must be text, not {seq.type}")
        lengths = pc.min_max(pc.binary_length(seq))  # bytes: a digit is one
        if seq.null_count or (len(seq) and (lengths["min"].as_py() != _SEQ_LENGTH
                                            or lengths["max"].as_py() != _SEQ_LENGTH)):
            raise BatchError(f"{where}: {SEQ_COLUMN} must hold {_SEQ_LENGTH}-digit text in every row")
        return data

    def _conform(self, data: pa.Table, table: DeltaTable, where: str) -> tuple[pa.Table, bool]:
        """`data` shaped for the table: a column of nulls takes the table's type (pandas
        gives an all-null column no type, and an integer column with a null becomes float),
        a number is cast to the table's number type when no value changes, a column the
        table lacks stays (schema merge) unless it is only nulls, a column the batch lacks
        is nulls. A column whose kind changed (text into a number column...) is a BatchError.
        Also says whether the batch adds columns."""
        import pyarrow as pa

        schema = pa.schema(table.schema().to_arrow())
        names, columns, adds = [], [], False
        for field, column in zip(data.schema, data.columns):
            if pa.types.is_dictionary(field.type):
                column = column.cast(field.type.value_type)
            index = schema.get_field_index(field.name)
            if index < 0:
                if pa.types.is_null(column.type):
                    continue  # no type to give it yet: a later batch with values adds it
                adds = True
            else:
                target = schema.field(index).type
                kind, table_kind = _family(column.type), _family(target)
                if column.type == target:
                    pass
                elif kind == "null":
                    column = pa.nulls(len(column), target)
                elif kind != table_kind:
                    raise BatchError(f"{where}: column {field.name!r} is {column.type} in this batch "
                                     f"but {target} in the Delta table")
                elif kind == "number":
                    try:
                        column = column.cast(target, safe=True)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise BatchError(f"{where}: column {field.name!r}: {column.type} values do "
                                         f"not fit the Delta table's {target} column "
                                         f"({_one_line(exc)[:120]})") from exc
            names.append(field.name)
            columns.append(column)
        for field in schema:
            if field.name not in names:
                names.append(field.name)
                columns.append(pa.nulls(data.num_rows, field.type))
        return pa.Table.from_arrays(columns, names=names), adds

    @staticmethod
    def _without_null_columns(data: pa.Table) -> pa.Table:
        import pyarrow as pa

        keep = [name for name, t in zip(data.column_names, data.schema.types) if not pa.types.is_null(t)]
        return data.select(keep) if len(keep) != data.num_columns else data

    def _merge(self, table: DeltaTable | None, data: pa.Table, where: str) -> None:
        if table is None:
            self._create(self._without_null_columns(data))
            log.debug("%s: %s created the table", self.path, where)
            return
        data, adds = self._conform(data, table, where)
        on = " AND ".join(f"t.{_ident(k)} = s.{_ident(k)}" for k in self.key)
        newer = f"s.{_ident(SEQ_COLUMN)} > t.{_ident(SEQ_COLUMN)}"
        dl = _deltalake()
        crash_point("sink.before_commit")
        try:
            metrics = (table.merge(data, predicate=on, source_alias="s", target_alias="t",
                                   merge_schema=adds, writer_properties=_writer_properties(),
                                   streamed_exec=False)
                       .when_matched_update_all(predicate=newer)
                       .when_not_matched_insert_all()
                       .execute())
        except dl.exceptions.SchemaMismatchError as exc:
            raise BatchError(f"{where}: the batch does not fit the Delta table: {_one_line(exc)}") from exc
        log.debug("%s: %s merged: %s inserted, %s updated", self.path, where,
                  metrics.get("num_target_rows_inserted"), metrics.get("num_target_rows_updated"))

    def _append(self, table: DeltaTable | None, data: pa.Table, app_id: str, where: str) -> None:
        if table is None:
            self._create(self._without_null_columns(data), app_id=app_id)
            return
        if table.transaction_version(app_id) is not None:
            log.debug("%s: %s already committed (%s), nothing to do", self.path, where, app_id)
            return
        data, adds = self._conform(data, table, where)
        dl = _deltalake()
        commit = dl.CommitProperties(app_transactions=[dl.Transaction(app_id, 1)])
        crash_point("sink.before_commit")
        try:
            dl.write_deltalake(table, data, mode="append", schema_mode="merge" if adds else None,
                               commit_properties=commit, writer_properties=_writer_properties())
        except dl.exceptions.SchemaMismatchError as exc:
            raise BatchError(f"{where}: the batch does not fit the Delta table: {_one_line(exc)}") from exc

    # -- the end of a run -----------------------------------------------------------------

    def finish_run(self, run_id: str, *, first_seq: str) -> None:
        """"replace": delete the rows of older runs (sequence below `first_seq`). All: compact
        the table when many small files piled up (one or more per batch): every later commit
        and every reader pays for each file. The rewrite changes no row (`dataChange` false:
        it conflicts with no reader, and app transactions stay), files are not deleted (no
        vacuum: time travel and running readers keep working), and a failed compaction is
        only logged."""
        if not (isinstance(first_seq, str) and len(first_seq) == _SEQ_LENGTH and first_seq.isdigit()):
            raise ValueError(f"DeltaSink.finish_run: first_seq must be {_SEQ_LENGTH} digits, "
                             f"not {first_seq!r}")
        if self.write_disposition == "replace":
            def delete(table: DeltaTable | None) -> int:
                if table is None:
                    return 0
                result = table.delete(f"{_ident(SEQ_COLUMN)} < '{first_seq}'")
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
            log.warning("%s: compaction after run %s skipped: %s", self.path, run_id, _one_line(exc))

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
