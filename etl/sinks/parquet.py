"""A local directory of Parquet files as a sink: one deterministic file per batch,
`part-<run>-<shard>-<batch>.parquet`, written atomically, so a batch written twice is held
once. With write_disposition "replace" (default), finishing a run removes the files of other
runs, so a finished dataset holds exactly one run's rows; "append" keeps them.

A folder of part files is not a table: it cannot hold the pipeline's key to one row (a key
in two batches is in two files). It says so (KeyAudit: the run summary counts such keys);
DeltaSink, SqlSink and MongoSink merge by key.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from etl.core.files import TEMP_PREFIX, atomic_write, orphaned
from etl.core.lazy import LazyModule
from etl.core.names import PART_FILE, PART_GLOB, part_file_name
from etl.core.errors import ConfigError
from etl.sinks.base import BackfillAware, KeyAudit, ParquetWriter, Reachable, Sink
from etl.sinks.parquet_keys import keys_in_several, read_keys

pd = LazyModule("pandas")
pa = LazyModule("pyarrow")
pq = LazyModule("pyarrow.parquet")

log = logging.getLogger(__name__)

DISPOSITIONS = ("replace", "append")

#: Temporary files older than this are leftovers of a crashed write and are swept.
_STALE_TEMP_SECONDS = 3600.0


class ParquetSink(Sink, BackfillAware, ParquetWriter, KeyAudit, Reachable):
    """A local directory of Parquet files, one per batch (path plain or `file://`)."""

    def __init__(self, path: str, *, write_disposition: str = "replace") -> None:
        if write_disposition not in DISPOSITIONS:
            raise ValueError(f"write_disposition must be one of {', '.join(DISPOSITIONS)}, "
                             f"not {write_disposition!r}")
        scheme, found, _ = str(path).partition("://")
        if found and scheme != "file":
            raise ConfigError(f"ParquetSink({path!r}): ParquetSink writes a local folder, not "
                              f"{scheme}:// (use DeltaSink({path!r}) for a table there)")
        self.path = Path(path[len("file://"):] if path.startswith("file://") else path)
        self.write_disposition = write_disposition

    def __repr__(self) -> str:
        return f"ParquetSink({str(self.path)!r}, write_disposition={self.write_disposition!r})"

    def describe(self) -> str:
        return f"parquet dataset {self.path} ({self.write_disposition})"

    def for_backfill(self) -> "ParquetSink":
        """The same dataset, appended to: a backfill or a replay adds rows to the dataset
        and must not replace what other runs loaded."""
        return ParquetSink(str(self.path), write_disposition="append")

    def reach(self) -> str:
        """The dataset's folder (or the nearest parent it would be made in) can be written;
        StoreUnwritable otherwise. Nothing is created."""
        from etl.sinks.reach import writable_folder

        return writable_folder(self.path)

    @staticmethod
    def file_name(run_id: str, shard: int, batch: int) -> str:
        """The batch's file name; ValueError for a run id that is not a plain name."""
        if not run_id or "/" in run_id or "\\" in run_id or run_id in (".", "..") or shard < 0 or batch < 0:
            raise ValueError(f"cannot name a part file for run {run_id!r}, shard {shard}, batch {batch}")
        return part_file_name(run_id, shard, batch)

    def write_batch(self, frame: pd.DataFrame, *, run_id: str, shard: int, batch: int) -> int:
        from etl.core.parquet import to_parquet_bytes

        return self.write_parquet(to_parquet_bytes(frame), run_id=run_id, shard=shard, batch=batch)

    def write_parquet(self, data: bytes, *, run_id: str, shard: int, batch: int,
                      rows: int | None = None) -> int:
        """Write a batch that is already Parquet bytes (the staged file: no re-encoding).
        `rows`: its row count when the caller knows it (its clean counted them), else read
        from the file's footer."""
        if rows is None:
            rows = pq.read_metadata(pa.BufferReader(data)).num_rows
        atomic_write(self.path / self.file_name(run_id, shard, batch), data)
        return rows

    def finish_run(self, run_id: str) -> None:
        """"replace": delete the part files of every other run. Both: sweep temporary files
        that crashed writes left behind (at once when their writer was a process of this
        host that is gone, else after an hour)."""
        if not self.path.is_dir():
            return
        for temp in self.path.glob(f"{TEMP_PREFIX}*"):
            try:
                if orphaned(temp) or time.time() - temp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    temp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        if self.write_disposition != "replace":
            return
        removed = 0
        for part in self.path.glob(PART_GLOB):
            match = PART_FILE.match(part.name)
            if match and match["run"] != run_id:
                part.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("%s: run %s replaced %d file(s) of earlier runs", self.path, run_id, removed)

    def repeated_keys(self, key: Sequence[str], *, shard_columns: Sequence[str] = (),
                      run_id: str | None = None,
                      counted: Mapping[int, int] | None = None) -> int | None:
        """Keys found in more than one part file of the dataset (reads only key columns,
        counts in Arrow: etl.sinks.parquet_keys); None when the folder is not here (a
        distributed run's workers write it elsewhere). When every file is of one run and
        the key holds the run's `shard_columns`, a key's rows are all in one shard, so only
        shards written in several files are read (none, when each shard is one batch), and
        not those whose count the run's processes made as they loaded them (`counted`,
        when the files are of `run_id`)."""
        if not self.path.is_dir():
            return None
        files = sorted(self.path.glob(PART_GLOB))
        names = [PART_FILE.match(f.name) for f in files]
        runs = {n["run"] for n in names if n}
        if shard_columns and set(shard_columns) <= set(key) and all(names) and len(runs) <= 1:
            known = dict(counted or {}) if runs == {run_id} else {}
            shard_of = [int(n["shard"]) for n in names if n]  # (all names matched)
            per_shard = Counter(shard_of)
            files = [f for f, shard in zip(files, shard_of)
                     if per_shard[shard] > 1 and shard not in known]
            done = sum(known.get(shard, 0) for shard in per_shard)
            log.debug("%s: key audit: %d shard(s) counted as their batches loaded, %d file(s) "
                      "read", self.path, len(known), len(files))
            if not files:
                return done
            # a key is in one shard's files only, so one count over all of them is the sum
            # of the per-shard counts, without a pass's fixed cost per shard
            return done + keys_in_several(read_keys(files, key), key)
        return keys_in_several(read_keys(files, key), key)

    def read_all(self) -> pd.DataFrame:
        files = sorted(self.path.glob(PART_GLOB)) if self.path.is_dir() else []
        frames = [pq.read_table(f).to_pandas() for f in files]
        frames = [f for f in frames if len(f.columns)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)


__all__ = ["DISPOSITIONS", "ParquetSink"]
