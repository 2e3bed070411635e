"""What every source is, and the optional things some sources can do.

A source hands a run its rows one shard batch at a time (`Source`, `Batch`). What only some
sources can do is a capability class of its own; a source declares the ones it has by
subclassing them, and the runtime asks `isinstance(source, Windowed)` rather than probing
for a method. The classes are runtime-checkable Protocols, so a source written elsewhere
that has the methods without naming the classes is still recognised; a source that names a
class but does not define one of its methods raises NotImplementedError when it is called.

Nothing here imports pandas or pyarrow: the package can be imported without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from etl.sources.windows import Window
    from shards import ShardPlan

#: Column holding why a source line could not be parsed ("line N: problem"); such rows are
#: quarantined, with the two columns below.
SOURCE_ERROR_COLUMN = "_source_error"
#: The line's number in the source file (1-based, counting every physical line).
SOURCE_LINE_COLUMN = "_source_line"
#: The line's whole raw text, never truncated (bytes that are not UTF-8 backslash-escaped),
#: so it can be fixed and replayed.
SOURCE_TEXT_COLUMN = "_source_text"
#: The columns an unparseable line's row carries; other sources' rows leave them out.
SOURCE_COLUMNS = (SOURCE_ERROR_COLUMN, SOURCE_LINE_COLUMN, SOURCE_TEXT_COLUMN)


@dataclass
class Batch:
    """Rows of one shard after `cursor_start`, up to the batch size, in cursor order.

    Rows are an Arrow table: it is what Parquet is written from, and slicing it costs no
    pandas work. `frame` converts on first use."""

    table: pa.Table
    cursor_start: Any
    cursor_end: Any
    exhausted: bool  # True when no row of the shard comes after cursor_end
    shard_progress: float | None = None  # share of the shard's rows read up to cursor_end
    #: The table of the shard's rows `table` is a slice of, and the row it begins at, for a
    #: source that cuts batches so (etl.runtime.shard_frames converts such a shard once).
    whole: pa.Table | None = None
    begin: int = 0

    @property
    def frame(self) -> pd.DataFrame:
        return self.table.to_pandas()


@runtime_checkable
class Source(Protocol):
    """What a pipeline reads from.

    A run asks for `fingerprint`, `row_count` and `sample` when it opens, fits its shard
    plan on the sample, calls `prepare` once, then reads each shard with `read_batch` from
    cursor None until a batch says `exhausted`, passing each batch's `cursor_end` as the
    next `after`."""

    def describe(self) -> str:
        """A displayable description (passwords masked)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the data as it is now; a resumed run refuses a changed source."""
        raise NotImplementedError

    def row_count(self) -> int | None:
        """Rows in the whole source, when known cheaply (for progress), else None."""
        raise NotImplementedError

    def sample(self, columns: list[str]) -> pd.DataFrame:
        """The given columns of every row (or of enough rows), to fit shard plans."""
        raise NotImplementedError

    def prepare(self, plan: ShardPlan) -> None:
        """Load and index what the batches of `plan` need (before worker processes fork)."""
        raise NotImplementedError

    def read_batch(self, plan: ShardPlan, shard: int, *, after: Any, limit: int) -> Batch:
        """Up to `limit` rows of `shard` whose cursor comes after `after` (None: from the
        start), in cursor order."""
        raise NotImplementedError


# -- capabilities -----------------------------------------------------------------------


@runtime_checkable
class Windowed(Protocol):
    """Can be restricted to the rows with start <= column < end (a backfill window)."""

    #: The window this source is restricted to; None for all rows.
    window: Window | None

    def windowed(self, window: Window) -> Any:
        """The same source, restricted to the rows inside `window`."""
        raise NotImplementedError


@runtime_checkable
class PlanChecked(Protocol):
    """Can only be split by some shard plans, and says so before a run is created."""

    def check_plan(self, plan: ShardPlan) -> None:
        """Raise ConfigError when `plan` cannot split this source."""
        raise NotImplementedError


@runtime_checkable
class SchemaKinds(Protocol):
    """Knows its columns' kinds without reading rows (a table's declared types)."""

    def schema_kinds(self) -> dict[str, str]:
        """Column name -> kind (etl.drift's kinds), for schema drift."""
        raise NotImplementedError


@runtime_checkable
class WholeTable(Protocol):
    """Holds its rows as one Arrow table, parsed once per process: a worker can parse it
    ahead of the first batch (`etl worker --preload`), and drift reads its schema."""

    def table(self) -> pa.Table:
        """The whole source as an Arrow table."""
        raise NotImplementedError


@runtime_checkable
class ParsesAhead(Protocol):
    """Can begin parsing in the background before it is asked for its rows: a run that
    opens here reads the source's fingerprint first (a hash of its bytes, which decides
    whether the run is new) and parses it next; begun together, the hash overlaps the
    parse instead of preceding it."""

    def parse_ahead(self) -> None:
        """Begin parsing, if not parsed or begun already; the rows are asked for as usual."""
        raise NotImplementedError


@runtime_checkable
class Recuttable(Protocol):
    """Gives the same rows for the same cursor range for as long as its fingerprint is
    unchanged (a file, whose fingerprint is its content hash). A fetched batch of such a
    source can be landed as a pointer (fingerprint and cursor range) and cut again when it
    is needed, instead of being copied to the object store (etl.runtime.raw)."""

    def fingerprint(self) -> str:
        raise NotImplementedError

    def recut(self, plan: ShardPlan, shard: int, *, after: Any, rows: int) -> Batch:
        """The `rows` rows of `shard` after cursor `after`: the batch a fetch cut there."""
        raise NotImplementedError


@runtime_checkable
class Reparsable(Protocol):
    """Can read again the raw lines it could not parse (SOURCE_TEXT_COLUMN), with the
    options it has now: a quarantine replay recovers them after a fixed source option."""

    def reparse(self, texts: list[str], numbers: list[int | None] | None = None) -> pa.Table:
        """One row per line of `texts`, in order: its values, or an error row carrying
        SOURCE_COLUMNS (with the line's number in the file, from `numbers`) when the line
        still cannot be read."""
        raise NotImplementedError


@runtime_checkable
class ShardGrouped(Protocol):
    """Readies its rows shard by shard: `prepare(plan)` groups every row by shard, then a
    worker process that will read only some shards readies just those, so the processes of
    an embedded run share that work instead of one doing it before they start."""

    def prepare_shards(self, plan: ShardPlan, shards: Collection[int]) -> None:
        """Make the batches of `shards` ready to read (after `prepare(plan)`)."""
        raise NotImplementedError

    def shard_sizes(self, plan: ShardPlan) -> list[int]:
        """Rows per shard of `plan` (after `prepare(plan)`): how an embedded run shares the
        shards out among its processes."""
        raise NotImplementedError


__all__ = ["SOURCE_COLUMNS", "SOURCE_ERROR_COLUMN", "SOURCE_LINE_COLUMN", "SOURCE_TEXT_COLUMN",
           "Batch", "ParsesAhead", "PlanChecked", "Recuttable", "Reparsable", "SchemaKinds",
           "ShardGrouped", "Source", "WholeTable", "Windowed"]
