"""Shard plans split a source into exactly the rows it has: none in two shards, none left out,
the same way on every machine, process and run."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards import HashShards, RangeShards, ShardPlan, plan_from_dict, stable_hash
from shards.range import to_utc_times

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UTC = dt.timezone.utc
EASTERN = dt.timezone(dt.timedelta(hours=-5))
ints = st.lists(st.one_of(st.none(), st.integers(-2**62, 2**62)), min_size=1, max_size=200)
floats = st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64)),
                  min_size=1, max_size=200)
texts = st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=1, max_size=200)
_moments = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1))
times = st.lists(st.one_of(st.none(), _moments), min_size=1, max_size=200)
aware_times = st.lists(st.one_of(st.none(), _moments.map(lambda t: t.replace(tzinfo=EASTERN))),
                       min_size=1, max_size=200)
iso_texts = st.lists(st.one_of(st.none(), st.just("not a time"),
                               _moments.map(lambda t: t.isoformat()),
                               _moments.map(lambda t: t.replace(tzinfo=UTC).isoformat())),
                     min_size=1, max_size=200).filter(
    lambda v: any(x not in (None, "not a time") for x in v))


def _column(values: list) -> pd.Series:  # type: ignore[type-arg]
    """A column of the kind the values are: Int64, float64, datetime or text."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, int) for v in present):
        return pd.Series(values, dtype="Int64")
    if all(isinstance(v, float) for v in present):
        return pd.Series(values, dtype="float64")
    if all(isinstance(v, dt.datetime) for v in present):
        return pd.to_datetime(pd.Series(values), utc=present[0].tzinfo is not None)
    return pd.Series(values, dtype="string")


def _assert_partition(assigned: np.ndarray, rows: int, shards: int) -> None:
    """Every row in exactly one shard 0..N-1, and the shards together hold every row once."""
    assert assigned.dtype == np.int64 and assigned.shape == (rows,)
    assert ((assigned >= 0) & (assigned < shards)).all()
    per_shard = [set(np.flatnonzero(assigned == s).tolist()) for s in range(shards)]
    assert set().union(*per_shard) == set(range(rows))  # nothing left out
    assert sum(len(p) for p in per_shard) == rows  # nothing in two shards


# -- every row in exactly one shard -------------------------------------------------------

@SETTINGS
@given(values=st.one_of(ints, floats, texts, times, aware_times), other=st.one_of(ints, texts),
       shards=st.integers(1, 64))
def test_hash_shards_partition_any_columns(values: list, other: list, shards: int) -> None:  # type: ignore[type-arg]
    # Given a key of one or two columns of any supported kind, nulls included
    rows = min(len(values), len(other))
    frame = pd.DataFrame({"k": _column(values[:rows]), "j": _column(other[:rows])})
    # When rows are assigned to hash shards on one column and on both
    for columns in (["k"], ["k", "j"]):
        assigned = HashShards(columns, shards).assign(frame)
        # Then every row is in exactly one shard in 0..N-1
        _assert_partition(assigned, rows, shards)


@SETTINGS
@given(values=st.one_of(ints, floats, times, aware_times, iso_texts), shards=st.integers(1, 64))
def test_range_shards_partition_and_keep_order(values: list, shards: int) -> None:  # type: ignore[type-arg]
    # Given a numeric, time or ISO-text column and a plan fitted on it
    frame = pd.DataFrame({"k": _column(values)})
    plan = RangeShards("k", shards).fit(frame)
    # When rows are assigned
    assigned = plan.assign(frame)
    # Then every row is in exactly one shard
    _assert_partition(assigned, len(frame), shards)
    # And, nulls aside, a larger key never lands in a lower shard than a smaller key
    series = frame["k"]
    if plan.time:
        stamps = to_utc_times(series)
        key, present = stamps.array.asi8, stamps.notna().to_numpy()
    else:
        key = series.to_numpy(dtype="float64" if series.dtype == "float64" else "int64",
                              na_value=0)
        present = series.notna().to_numpy() & ~np.isnan(key.astype("float64"))
    order = np.argsort(key[present], kind="stable")
    assert (np.diff(assigned[present][order]) >= 0).all()
    # And nulls (and text that is not a time) go to shard 0
    assert (assigned[~present] == 0).all()


# -- hash shards: the same key gets the same shard, however it arrives ----------------------

@SETTINGS
@given(values=ints, shards=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_hash_shards_ignore_row_order_and_integer_width(values: list, shards: int, seed: int) -> None:  # type: ignore[type-arg]
    # Given the same keys as Int64, as int32/int64/object where they fit, and shuffled
    frame = pd.DataFrame({"k": pd.Series(values, dtype="Int64")})
    plan = HashShards("k", shards)
    base = plan.assign(frame)
    order = np.random.default_rng(seed).permutation(len(frame))
    # Then each key keeps its shard whatever the row order
    assert (plan.assign(frame.iloc[order]) == base[order]).all()
    # And whatever the storage of the integer
    small = frame["k"].dropna()
    small = small[(small > -2**31) & (small < 2**31)]
    for dtype in ("int32", "int64", "Int32", object, "float64"):
        again = pd.DataFrame({"k": small.astype(dtype)})
        assert (plan.assign(again) == base[small.index]).all(), dtype


@SETTINGS
@given(values=times, shards=st.integers(1, 64))
def test_hash_shards_ignore_time_unit_and_zone(values: list, shards: int) -> None:  # type: ignore[type-arg]
    # Given the same instants stored naive (UTC), in New York time, and in s/ms/us/ns units
    naive = pd.to_datetime(pd.Series(values)).dt.floor("s")
    plan = HashShards("t", shards)
    base = plan.assign(pd.DataFrame({"t": naive}))
    # Then every form shards the same way
    for unit in ("s", "ms", "us", "ns"):
        assert (plan.assign(pd.DataFrame({"t": naive.dt.as_unit(unit)})) == base).all()
    zoned = naive.dt.tz_localize("UTC").dt.tz_convert("America/New_York")
    assert (plan.assign(pd.DataFrame({"t": zoned})) == base).all()


def test_hash_of_text_is_the_same_for_few_and_many_distinct_values() -> None:
    # Given a long column with few distinct values (hashed once per distinct value)
    codes = pd.Series(["UA", "AA", None, "B6", "é"] * 2000, dtype="str")
    whole = stable_hash(pd.DataFrame({"c": codes}), ["c"])
    # When its rows are hashed in small pieces (hashed row by row) and as object/category
    pieces = np.concatenate([stable_hash(pd.DataFrame({"c": codes[i:i + 100]}), ["c"])
                             for i in range(0, len(codes), 100)])
    # Then the numbers agree
    assert (pieces == whole).all()
    for dtype in (object, "string", "category"):
        assert (stable_hash(pd.DataFrame({"c": codes.astype(dtype)}), ["c"]) == whole).all()


def test_hash_is_pinned_by_golden_values() -> None:
    # Given known keys: these numbers must never change, or existing runs would re-shard
    frame = pd.DataFrame({"carrier": ["UA", "AA", "B6", None], "flight": [1545, 1141, 725, 0]})
    # Then their hashes, and their shards out of 20, are exactly these
    assert stable_hash(frame, ["carrier", "flight"]).tolist() == GOLDEN
    assert HashShards(["carrier", "flight"], 20).assign(frame).tolist() == [17, 19, 10, 13]
    # And so are those of floats, times and text with accents
    other = pd.DataFrame({"x": [1.5, -0.25, 3.0, np.nan],
                          "t": pd.to_datetime(["2013-01-01 05:17", "2013-12-31 23:59",
                                               "1999-01-01 00:00", None], utc=True),
                          "s": ["é", "", "flights", "UA 1545"]})
    assert stable_hash(other, ["x"]).tolist() == GOLDEN_FLOATS
    assert stable_hash(other, ["t"]).tolist() == GOLDEN_TIMES
    assert HashShards(["s"], 7).assign(other).tolist() == [1, 6, 0, 5]


GOLDEN = [7043722003381795977, 12497284533442914099, 4705021625374082550, 13740127969606730753]
GOLDEN_FLOATS = [2116467366289002887, 1587426676429564944, 2092789425003139053,
                 7959387129412676716]
GOLDEN_TIMES = [5929799069956779423, 17958277199463914529, 2655455942667197943,
                7959387129412676716]

_FRESH = """
import json, numpy as np, pandas as pd
from shards import HashShards
frame = pd.DataFrame({"s": ["x", "y", None, "é", "UA"], "i": [1, 2, 3, None, 2**40],
                      "f": [0.5, None, 3.0, -1e300, np.inf],
                      "t": pd.to_datetime(["2013-01-01", None, "2200-01-01", "1970-01-01", "2013-06-01"])})
print(json.dumps({c: HashShards([c, "s"], 97).assign(frame).tolist() for c in frame}))
"""


def test_hash_is_the_same_in_fresh_processes() -> None:
    # Given keys of every kind, hashed by two new Python processes with different hash salts
    def run(seed: str) -> dict[str, list[int]]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                              check=True, env=env)
        return json.loads(done.stdout)

    first, second = run("1"), run("2024")
    # Then both processes agree with each other and with this one
    assert first == second
    namespace: dict[str, object] = {}
    exec(_FRESH.replace("print(", "result = ("), namespace)  # noqa: S102 - our own snippet
    assert json.loads(namespace["result"]) == first  # type: ignore[arg-type]


# -- range shards ------------------------------------------------------------------------

def test_range_bounds_are_exact_and_json_able() -> None:
    # Given integer keys near the int64 limits and times stored in different units and zones
    big = pd.DataFrame({"k": pd.Series([-2**62, 2**62, 2**62 - 1], dtype="int64")})
    plan = RangeShards("k", 2).fit(big)
    # Then integer bounds are integers, exact where floats would round
    assert plan.bounds == (-2**62, 0, 2**62) and plan.assign(big).tolist() == [0, 1, 1]
    # And time bounds are UTC nanoseconds whatever the column's unit or zone
    stamps = pd.Series(pd.date_range("2013-01-01", periods=10, freq="D", tz="America/New_York"))
    fitted = {RangeShards("t", 3).fit(pd.DataFrame({"t": stamps.dt.as_unit(u)})).bounds
              for u in ("s", "ms", "us", "ns")}
    fitted.add(RangeShards("t", 3).fit(
        pd.DataFrame({"t": stamps.dt.tz_convert("UTC").dt.tz_localize(None)})).bounds)
    fitted.add(RangeShards("t", 3).fit(
        pd.DataFrame({"t": stamps.map(lambda t: t.isoformat())})).bounds)
    assert len(fitted) == 1
    (bounds,) = fitted
    assert bounds[0] == pd.Timestamp("2013-01-01 05:00", tz="UTC").value
    assert all(isinstance(b, int) for b in bounds)
    json.dumps(RangeShards("t", 3, bounds=bounds, time=True).to_dict())


@SETTINGS
@given(values=st.one_of(ints, floats, times, aware_times, iso_texts), shards=st.integers(1, 64))
def test_plans_round_trip_through_their_dict(values: list, shards: int) -> None:  # type: ignore[type-arg]
    # Given fitted range and hash plans over any column
    frame = pd.DataFrame({"k": _column(values)})
    for plan in (RangeShards("k", shards).fit(frame), HashShards(["k"], shards).fit(frame)):
        # When the plan is stored as JSON and rebuilt (as a resumed run does)
        again = plan_from_dict(json.loads(json.dumps(plan.to_dict())))
        # Then it is the same plan and splits the same way
        assert isinstance(again, ShardPlan)
        assert again == plan and again.describe() == plan.describe()
        assert (again.assign(frame) == plan.assign(frame)).all()


def test_describe_names_the_plan() -> None:
    assert HashShards(["carrier", "flight"], 20).describe() == "hash(carrier,flight)/20"
    assert HashShards("carrier", 3).describe() == "hash(carrier)/3"
    assert RangeShards("time_hour", 8).describe() == "range(time_hour)/8"


def test_plans_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        RangeShards("a", 3).assign(pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match=">= 1"):
        RangeShards("a", 0)
    with pytest.raises(ValueError, match=">= 1"):
        HashShards("a", 0)
    with pytest.raises(ValueError, match="at least one"):
        HashShards([], 3)
    with pytest.raises(ValueError, match="not a numeric or time column"):
        RangeShards("a", 3).fit(pd.DataFrame({"a": ["UA", "AA"]}))
    with pytest.raises(ValueError, match="unknown shard plan kind"):
        plan_from_dict({"kind": "round-robin", "shards": 3})


def test_range_rows_outside_the_fitted_bounds_are_not_lost() -> None:
    # Given a plan fitted on 0..99
    plan = RangeShards("a", 4).fit(pd.DataFrame({"a": range(100)}))
    # When rows below, above and null arrive later, as integers or floats
    assigned = plan.assign(pd.DataFrame({"a": [-50, 1000, None, 49.5]}))
    # Then they go to the first, last, first and third shards (edges 0, 24, 49, 74, 99)
    assert assigned.tolist() == [0, 3, 0, 2]
