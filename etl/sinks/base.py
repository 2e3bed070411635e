"""What every sink is, and the optional things some sinks can do.

Every write is idempotent: a batch written twice (after a crash between the write and its
ledger entry) is held once. What only some sinks can do is a capability class of its own; a
sink declares the ones it has by subclassing them, and the runtime asks
`isinstance(sink, ParquetWriter)` rather than probing for a method. The classes are
runtime-checkable Protocols, so a sink written elsewhere that has the methods without naming
the classes is still recognised; a sink that names a class but does not define one of its
methods raises NotImplementedError when that method is called.

Nothing here imports pandas or pyarrow: the package can be imported without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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


@runtime_checkable
class ParquetWriter(Protocol):
    """Takes a batch that is already Parquet bytes (the staged file) without re-encoding it."""

    def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int) -> int:
        """Write one batch of Parquet bytes idempotently; rows written."""
        raise NotImplementedError


__all__ = ["BackfillAware", "ParquetWriter", "Sink"]
