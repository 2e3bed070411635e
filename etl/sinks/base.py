"""What every sink is, and the optional things some sinks can do.

Every write is idempotent: a batch written twice (after a crash between the write and its
ledger entry) is held once. What only some sinks can do is a capability class of its own; a
sink declares the ones it has by subclassing them, and the runtime asks
`isinstance(sink, ParquetWriter)` rather than probing for a method. The classes are
runtime-checkable Protocols, so a sink written elsewhere that has the methods without naming
the classes is still recognised; a sink that names a class but does not define one of its
methods raises NotImplementedError when that method is called.

A sink that can be probed without writing anything is `Reachable`: `etl describe --check`
and an embedded `etl run` (before any work) ask it whether its database answers, its folder
can be written, its bucket is there.

A sink that honours the pipeline's key is `Sequenced`: it has a write disposition
("append", "replace" or "merge") and takes every batch with SEQ_COLUMN, a text per row that
orders all rows ever loaded by (run, shard, batch, row in the raw payload). A merge keeps,
per key, the row with the greatest sequence: the outcome is that of pandas'
`drop_duplicates(key, keep="last")` over every input in that order, whatever order the
batches load in, however often one is redelivered, wherever a load was killed.

Nothing here imports pandas or pyarrow: the package can be imported without them.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd


@runtime_checkable
class Sink(Protocol):
    """Where a pipeline's cleaned batches are loaded."""

    def describe(self) -> str:
        """A displayable description (passwords masked)."""
        raise NotImplementedError

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        """Write one batch idempotently (again = as if once); rows written."""
        raise NotImplementedError

    def finish_run(self, run_id: str) -> None:
        """Called once every batch of the run is loaded."""
        raise NotImplementedError

    def read_all(self) -> pd.DataFrame:
        """Everything the sink holds now."""
        raise NotImplementedError


# -- capabilities -----------------------------------------------------------------------


@runtime_checkable
class BackfillAware(Protocol):
    """Replaces what earlier runs loaded unless told a run only adds rows: a backfill window
    or a quarantine replay loads through `for_backfill()` instead."""

    def for_backfill(self) -> Any:
        """The same destination, appended to: other runs' rows are kept."""
        raise NotImplementedError


#: The column a Sequenced sink receives with every batch and keeps in the destination.
SEQ_COLUMN = "_etl_seq"

#: What a Sequenced sink may do with a run's rows. "append": add them, each batch once.
#: "replace": add them, and once the run is complete drop the rows of older runs.
#: "merge": upsert by key, the row with the greater sequence wins.
DISPOSITIONS = ("append", "replace", "merge")

_SEQ_WIDTHS = (13, 6, 9, 12)  # run stamp (ms since the epoch), shard, batch, row
#: Digits of a sequence, and of its last part (the row).
SEQ_LENGTH, SEQ_ROW_DIGITS = sum(_SEQ_WIDTHS), _SEQ_WIDTHS[-1]


def make_seq(run_stamp: int, shard: int, batch: int, row: int) -> str:
    """The sequence text of one row: 40 digits, so text order is (run, shard, batch, row)
    order in every store (SQL collations, MongoDB, Delta). `run_stamp` orders runs: the
    run's creation time in milliseconds (a replay keeps the stamp of the run it replays, its
    rows being that run's rows, late)."""
    parts = (run_stamp, shard, batch, row)
    if any(p < 0 or p >= 10 ** w for p, w in zip(parts, _SEQ_WIDTHS)):
        raise ValueError(f"sequence part out of range: {parts}")
    return "".join(f"{p:0{w}d}" for p, w in zip(parts, _SEQ_WIDTHS))


def check_disposition(sink: str, disposition: str, key: Sequence[str] | None,
                      allowed: Sequence[str] = DISPOSITIONS) -> tuple[str, ...]:
    """The sink's key as a tuple, or ValueError (one line) for a disposition it does not
    offer or a key given as a plain string."""
    if disposition not in allowed:
        raise ValueError(f"{sink}: write_disposition must be one of {', '.join(allowed)}, "
                         f"not {disposition!r}")
    if isinstance(key, str):
        raise ValueError(f"{sink}: key must be a list of column names, not the string {key!r}")
    return tuple(key or ())


@runtime_checkable
class Sequenced(Protocol):
    """Honours the pipeline's key: see the module docstring. `key` is empty until the sink
    is bound to a pipeline (`with_key`), which Pipeline does when it is built."""

    write_disposition: str
    key: tuple[str, ...]

    def with_key(self, key: Sequence[str]) -> Any:
        """The same destination bound to `key` (a merge upserts on it)."""
        raise NotImplementedError

    def finish_run(self, run_id: str, *, first_seq: str) -> None:
        """Called once every batch of the run is loaded; `first_seq` is the smallest sequence
        the run can give a row: "replace" drops every row below it."""
        raise NotImplementedError


@runtime_checkable
class SerialCommits(Protocol):
    """Commits optimistically, so loads racing on one destination redo their work on each
    lost race (a Delta MERGE re-reads and re-joins the table). The runtime loads into it one
    batch at a time per `commit_scope()`, holding a lease of that name in the state store,
    which every worker on every machine shares; None: no need this time (an append)."""

    def commit_scope(self) -> str | None:
        """The name loads into this destination queue on, or None."""
        raise NotImplementedError


@runtime_checkable
class KeyAudit(Protocol):
    """Cannot hold a key to one row, but can count how many keys it holds more than once, so
    a run summary says so instead of leaving it to be found downstream."""

    def repeated_keys(self, key: Sequence[str], *, shard_columns: Sequence[str] = (),
                      run_id: str | None = None,
                      counted: Mapping[int, int] | None = None) -> int | None:
        """Keys held in more than one batch (a key repeated within one batch: once per
        batch, the stages decide that); None when this process cannot see the destination
        (a folder on the workers' machines). `shard_columns`: the columns a run's hash shard
        plan assigns rows by; when the key holds them all, rows of one key are in one shard
        of a run, which an audit may use to look at less. `counted`: per shard of run
        `run_id`, the count already made by the process that loaded all of that shard's
        batches (etl.runtime.loaded_keys), usable where the destination holds that run
        alone and keys stay within shards."""
        raise NotImplementedError


@runtime_checkable
class ParquetWriter(Protocol):
    """Takes a batch that is already Parquet bytes (the staged file) without re-encoding it.
    A writer whose method also takes `rows=` (the batch's row count, when the clean that
    encoded it counted them in this process) may return that instead of reading the file's
    footer again (~0.2 ms a batch): see `takes_rows`."""

    def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int) -> int:
        """Write one batch of Parquet bytes idempotently; rows written."""
        raise NotImplementedError


_TAKES_ROWS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def takes_rows(sink: ParquetWriter) -> bool:
    """Whether `sink.write_parquet` accepts `rows=` (asked once per function: a method
    replaced on one instance is asked for itself)."""
    method = sink.write_parquet
    function = getattr(method, "__func__", method)
    try:
        return _TAKES_ROWS[function]
    except (KeyError, TypeError):
        pass
    import inspect

    try:
        known = "rows" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        known = False
    try:
        _TAKES_ROWS[function] = known
    except TypeError:  # not weakly referable (a builtin): asked each time
        pass
    return known


@runtime_checkable
class Reachable(Protocol):
    """Can be probed before anything is written: the database answers with the credentials
    given, the folder can be written, the bucket is there. A sink that cannot say is not
    Reachable and is not probed."""

    def reach(self) -> str:
        """Probe the destination without writing anything; a short detail of what answered
        ("the database answers", "the folder is writable"), or raise what went wrong."""
        raise NotImplementedError


__all__ = ["BackfillAware", "DISPOSITIONS", "KeyAudit", "ParquetWriter", "Reachable", "SEQ_COLUMN",
           "SEQ_LENGTH", "SEQ_ROW_DIGITS", "Sequenced", "SerialCommits", "Sink", "check_disposition",
           "make_seq", "takes_rows"]
