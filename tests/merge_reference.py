"""The reference a merge sink is held to, and random load histories to hold it to.

A merge keeps, per key, the row that comes last in (run, shard, batch, row) order: pandas'
`drop_duplicates(key, keep="last")` over every input in that order. A history is a set of
batches over several runs, loaded in a random order with some batches delivered twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from hypothesis import strategies as st

from tests.contracts import sequenced

KEY = ["id"]


@dataclass(frozen=True)
class Load:
    """One delivery of a batch: the run's stamp, shard, batch and its rows."""

    stamp: int
    shard: int
    batch: int
    rows: tuple[tuple[int, int], ...]  # (id, value)

    @property
    def run_id(self) -> str:
        return f"run{self.stamp}"

    def frame(self) -> pd.DataFrame:
        plain = pd.DataFrame(list(self.rows), columns=["id", "v"]).astype({"id": "int64", "v": "int64"})
        return sequenced(plain, stamp=self.stamp, shard=self.shard, batch=self.batch)


@st.composite
def histories(draw: st.DrawFn, *, max_batches: int = 8) -> list[Load]:
    """Batches of 1..3 runs (few distinct keys, so keys repeat within and across batches),
    in a random load order, some delivered twice."""
    batches = []
    for stamp in range(1, draw(st.integers(1, 3)) + 1):
        for number in range(draw(st.integers(1, max_batches // 2))):
            shard, batch = divmod(number, 2)
            rows = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(-1000, 1000)),
                                 min_size=1, max_size=6))
            batches.append(Load(stamp, shard, batch, tuple(rows)))
    again = draw(st.lists(st.sampled_from(batches), max_size=3))
    return draw(st.permutations(batches + again))


def reference(loads: list[Load]) -> pd.DataFrame:
    """What a merge must hold after `loads`: the last row per key in sequence order."""
    from etl.sinks.base import SEQ_COLUMN

    every = pd.concat([load.frame() for load in set(loads)], ignore_index=True)
    every = every.sort_values(SEQ_COLUMN, kind="stable")
    return held(every.drop_duplicates(KEY, keep="last").drop(columns=[SEQ_COLUMN]))


def held(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame of (id, v) in a comparable form: int64 columns, sorted by id."""
    if frame.empty:
        return pd.DataFrame({"id": pd.Series(dtype="int64"), "v": pd.Series(dtype="int64")})
    return (frame[["id", "v"]].astype("int64").sort_values("id").reset_index(drop=True))
