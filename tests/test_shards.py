"""Shard plans split a source into exactly the rows it has: none in two shards, none left out."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards import HashShards, RangeShards, plan_from_dict, stable_hash

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints = st.lists(st.one_of(st.none(), st.integers(-2**62, 2**62)), min_size=1, max_size=200)
floats = st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64)),
                  min_size=1, max_size=200)
texts = st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=1, max_size=200)
times = st.lists(st.one_of(st.none(), st.datetimes(min_value=pd.Timestamp("1900-01-01").to_pydatetime(),
                                                     max_value=pd.Timestamp("2200-01-01").to_pydatetime())),
                 min_size=1, max_size=200)


def _column(values: list) -> pd.Series:  # type: ignore[type-arg]
    if all(v is None or isinstance(v, int) for v in values):
        return pd.Series(values, dtype="Int64")
    if all(v is None or isinstance(v, float) for v in values):
        return pd.Series(values, dtype="float64")
    if all(v is None or not isinstance(v, str) for v in values):
        return pd.to_datetime(pd.Series(values))
    return pd.Series(values, dtype="string")


def _assert_partition(assigned: np.ndarray, rows: int, shards: int) -> None:
    assert assigned.shape == (rows,)
    assert ((assigned >= 0) & (assigned < shards)).all()
    per_shard = [set(np.flatnonzero(assigned == s)) for s in range(shards)]
    union = set().union(*per_shard)
    assert union == set(range(rows))  # nothing left out
    assert sum(len(p) for p in per_shard) == rows  # nothing in two shards


@SETTINGS
@given(values=st.one_of(ints, floats, texts, times), shards=st.integers(1, 64))
def test_hash_shards_partition_any_column(values: list, shards: int) -> None:  # type: ignore[type-arg]
    # Given any column of any supported kind, nulls included
    frame = pd.DataFrame({"k": _column(values)})
    # When rows are assigned to hash shards
    assigned = HashShards(["k"], shards).assign(frame)
    # Then every row is in exactly one shard in 0..N-1
    _assert_partition(assigned, len(frame), shards)


@SETTINGS
@given(values=st.one_of(ints, floats, times), shards=st.integers(1, 64))
def test_range_shards_partition_and_keep_order(values: list, shards: int) -> None:  # type: ignore[type-arg]
    # Given a numeric or time column and a plan fitted on it
    frame = pd.DataFrame({"k": _column(values)})
    plan = RangeShards("k", shards).fit(frame)
    # When rows are assigned
    assigned = plan.assign(frame)
    # Then every row is in exactly one shard
    _assert_partition(assigned, len(frame), shards)
    # And a larger key never lands in a lower shard than a smaller key
    series = frame["k"]
    key = (pd.to_datetime(series, utc=True).astype("int64") if plan.time
           else pd.to_numeric(series).astype("float64"))
    present = series.notna().to_numpy() & np.isfinite(key.to_numpy(dtype="float64", na_value=np.nan))
    order = np.argsort(key.to_numpy()[present], kind="stable")
    assert (np.diff(assigned[present][order]) >= 0).all()


@SETTINGS
@given(values=ints, shards=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_hash_shards_ignore_row_order_and_integer_width(values: list, shards: int, seed: int) -> None:  # type: ignore[type-arg]
    # Given the same keys as Int64, as int32 where they fit, and shuffled
    frame = pd.DataFrame({"k": pd.Series(values, dtype="Int64")})
    plan = HashShards("k", shards)
    base = plan.assign(frame)
    order = np.random.default_rng(seed).permutation(len(frame))
    # Then each key keeps its shard
    assert (plan.assign(frame.iloc[order]) == base[order]).all()
    small = frame["k"].dropna()
    small = small[(small > -2**31) & (small < 2**31)]
    as32 = pd.DataFrame({"k": small.astype("int32")})
    assert (plan.assign(as32) == base[small.index]).all()
    # And whole floats shard like the integers they equal
    as_float = pd.DataFrame({"k": small.astype("float64")})
    assert (plan.assign(as_float) == base[small.index]).all()


def test_hash_is_pinned_by_golden_values() -> None:
    # Given known keys: these numbers must never change, or existing runs would re-shard
    frame = pd.DataFrame({"carrier": ["UA", "AA", "B6", None], "flight": [1545, 1141, 725, 0]})
    # Then their hashes are exactly these
    assert stable_hash(frame, ["carrier", "flight"]).tolist() == GOLDEN


GOLDEN = [7043722003381795977, 12497284533442914099, 4705021625374082550, 13740127969606730753]


def test_hash_is_the_same_in_a_fresh_process() -> None:
    # Given a frame hashed here
    frame = pd.DataFrame({"a": ["x", "y", None, "é"], "b": [1, 2, 3, None]})
    here = HashShards(["a", "b"], 97).assign(frame).tolist()
    # When a new Python process (new hash salt) hashes the same keys
    code = ("import pandas as pd, json; from shards import HashShards; "
            "f = pd.DataFrame({'a': ['x', 'y', None, 'é'], 'b': [1, 2, 3, None]}); "
            "print(json.dumps(HashShards(['a', 'b'], 97).assign(f).tolist()))")
    there = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True,
                                      env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout)
    # Then both agree
    assert here == there


@pytest.mark.parametrize("plan", [HashShards(["a", "b"], 7), RangeShards("a", 5)])
def test_plan_round_trips_through_its_dict(plan) -> None:  # type: ignore[no-untyped-def]
    frame = pd.DataFrame({"a": range(100), "b": range(100)})
    fitted = plan.fit(frame)
    data = json.loads(json.dumps(fitted.to_dict()))
    again = plan_from_dict(data)
    assert again.describe() == fitted.describe()
    assert (again.assign(frame) == fitted.assign(frame)).all()


def test_range_plan_must_be_fitted_and_sized() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        RangeShards("a", 3).assign(pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match=">= 1"):
        RangeShards("a", 0)
    with pytest.raises(ValueError, match=">= 1"):
        HashShards("a", 0)


def test_range_rows_outside_the_fitted_bounds_are_not_lost() -> None:
    # Given a plan fitted on 0..99
    plan = RangeShards("a", 4).fit(pd.DataFrame({"a": range(100)}))
    # When rows below, above and null arrive later
    assigned = plan.assign(pd.DataFrame({"a": [-50, 1000, None]}))
    # Then they go to the first, last and first shard
    assert assigned.tolist() == [0, 3, 0]
