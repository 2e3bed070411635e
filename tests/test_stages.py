"""Cleaning stages: what they keep, what they reject and why, and that no row vanishes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.errors import StageError
from stages import (Cast, Dedupe, Derive, DeriveTimestamp, DropColumns, DropRows, Filter, Lower,
                    NotNull, Rename, Select, SnakeCaseColumns, Trim, Upper, run_stages)
from stages.base import REASON_COLUMN, STAGE_COLUMN

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cells = st.one_of(st.none(), st.integers(-1000, 1000), st.floats(allow_nan=True, width=32),
                  st.text(max_size=6), st.sampled_from(["12", " 7 ", "1.5", "abc", "", "NaN"]))


@st.composite
def frames(draw) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    rows = draw(st.integers(0, 40))
    return pd.DataFrame({
        "a": pd.Series([draw(cells) for _ in range(rows)], dtype=object),
        "b": pd.Series([draw(st.one_of(st.none(), st.integers(0, 3))) for _ in range(rows)],
                       dtype="Int64"),
    })


def _conserves(stage, frame: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    before = frame.copy()
    result = stage.apply(frame)
    rejected = 0 if result.rejected is None else len(result.rejected)
    assert len(result.kept) + rejected == len(frame)
    if rejected:
        assert result.rejected[REASON_COLUMN].notna().all()
    pd.testing.assert_frame_equal(frame, before)  # the input is not mutated


@SETTINGS
@given(frame=frames())
def test_no_stage_loses_or_invents_rows(frame: pd.DataFrame) -> None:
    # Given any frame, When each row-rejecting stage runs, Then kept + rejected == input
    for stage in (Cast({"a": "Int64"}), Cast({"a": "float64"}), Cast({"a": "boolean"}),
                  DropRows("b > 1", reason="big b"), Filter("b == 1", reason="not one"),
                  NotNull(["a", "b"]), Dedupe(["b"]), Dedupe(["a", "b"], keep="last")):
        _conserves(stage, frame)


@SETTINGS
@given(frame=frames())
def test_a_chain_conserves_rows_and_tags_the_stage(frame: pd.DataFrame) -> None:
    chain = [NotNull(["b"]), Cast({"a": "Int64"}), Dedupe(["a"])]
    result = run_stages(frame, chain)
    assert len(result.clean) + len(result.quarantined) == len(frame)
    assert set(result.quarantined[STAGE_COLUMN]) <= {"not_null", "cast", "dedupe"}


def test_stages_are_pure() -> None:
    frame = pd.DataFrame({"Dep Time": [1, None, 3], "code": [" ua", "aa ", None]})
    chain = [SnakeCaseColumns(), Trim(columns=["code"]), Upper(columns=["code"]),
             NotNull(["dep_time"])]
    first, second = run_stages(frame, chain), run_stages(frame, chain)
    pd.testing.assert_frame_equal(first.clean, second.clean)
    assert frame.columns.tolist() == ["Dep Time", "code"]


def test_cast_rejects_the_row_and_names_column_value_and_type() -> None:
    # Given a column with one value that is not an integer
    frame = pd.DataFrame({"distance": ["100", "abc", None, "2.5"], "id": [1, 2, 3, 4]})
    # When cast to Int64
    result = Cast({"distance": "Int64"}).apply(frame)
    # Then "abc" and 2.5 are rejected with a reason; null stays a null, not a rejection
    assert result.kept["id"].tolist() == [1, 3]
    assert result.kept["distance"].tolist()[0] == 100 and result.kept["distance"].isna().tolist()[1]
    reasons = result.rejected[REASON_COLUMN].tolist()
    assert reasons == ["cast: column 'distance' value 'abc' is not Int64",
                       "cast: column 'distance' value '2.5' is not Int64"]


def test_cast_many_types() -> None:
    frame = pd.DataFrame({"f": ["1.5", "x"], "t": ["2026-01-01T00:00:00Z", "nope"],
                          "b": ["yes", "0"], "s": [1, 2]})
    result = Cast({"f": "float64", "t": "datetime64[ns, UTC]", "b": "boolean", "s": "string"}).apply(frame)
    assert len(result.kept) == 1 and result.kept["f"].iloc[0] == 1.5
    assert result.kept["t"].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    assert bool(result.kept["b"].iloc[0]) is True
    assert result.rejected[REASON_COLUMN].iloc[0].startswith("cast: column 'f' value 'x'")


def test_unknown_column_names_stage_column_and_what_exists() -> None:
    frame = pd.DataFrame({"a": [1]})
    for stage in (Cast({"zz": "Int64"}), Trim(columns=["zz"]), Dedupe(["zz"]), Select(["zz"]),
                  DropColumns(["zz"]), Rename({"zz": "y"}), NotNull(["zz"])):
        with pytest.raises(StageError, match=r"'zz'.*columns are: a"):
            stage.apply(frame)
    with pytest.raises(StageError, match="cannot evaluate"):
        DropRows("nope > 1", reason="x").apply(frame)


def test_snake_case_and_collisions() -> None:
    frame = pd.DataFrame({"Dep Time": [1], "arrDelay": [2], " ORIGIN-code ": [3]})
    assert SnakeCaseColumns().apply(frame).kept.columns.tolist() == ["dep_time", "arr_delay", "origin_code"]
    with pytest.raises(StageError, match="collide"):
        SnakeCaseColumns().apply(pd.DataFrame({"A b": [1], "a_b": [2]}))


def test_text_stages_keep_nulls() -> None:
    frame = pd.DataFrame({"c": ["  ab ", None, "Cd"]})
    assert Trim(columns=["c"]).apply(frame).kept["c"].tolist()[::2] == ["ab", "Cd"]
    assert Upper(columns="c").apply(frame).kept["c"].isna().tolist() == [False, True, False]
    assert Lower(columns="c").apply(frame).kept["c"].iloc[2] == "cd"


def test_dedupe_keeps_first_or_last_and_says_why() -> None:
    frame = pd.DataFrame({"k": [1, 1, 2], "v": ["a", "b", "c"]})
    first = Dedupe(["k"]).apply(frame)
    last = Dedupe(["k"], keep="last").apply(frame)
    assert first.kept["v"].tolist() == ["a", "c"] and last.kept["v"].tolist() == ["b", "c"]
    assert first.rejected[REASON_COLUMN].tolist() == ["duplicate key (k)"]
    with pytest.raises(StageError):
        Dedupe(["k"], keep="middle")  # type: ignore[arg-type]


def test_drop_rows_filter_and_derive() -> None:
    frame = pd.DataFrame({"dep_time": [517.0, np.nan, 600.0], "x": [1, 2, 3]})
    dropped = DropRows("dep_time.isna()", reason="cancelled").apply(frame)
    assert dropped.kept["x"].tolist() == [1, 3]
    assert dropped.rejected[REASON_COLUMN].tolist() == ["cancelled"]
    kept = Filter("x >= 2", reason="too small").apply(frame)
    assert kept.kept["x"].tolist() == [2, 3]
    assert Derive("y", "x * 2").apply(frame).kept["y"].tolist() == [2, 4, 6]
    assert Derive("z", lambda f: f["x"] + 1).apply(frame).kept["z"].tolist() == [2, 3, 4]


def test_derive_timestamp_from_parts_in_local_time() -> None:
    # Given date parts and HHMM times in New York, with bad and DST-gap rows
    frame = pd.DataFrame({"year": [2013, 2013, 2013, 2013, 2013, 2013],
                          "month": [1, 1, 2, 13, 3, 7],
                          "day": [1, 31, 29, 1, 10, 4],
                          "hhmm": [517, 2400, 100, 100, 230, 1275]})
    stage = DeriveTimestamp(target="ts", year="year", month="month", day="day", hhmm="hhmm",
                            tz="America/New_York")
    result = stage.apply(frame)
    # Then valid rows get UTC timestamps (517 EST = 10:17 UTC; 2400 = next midnight)
    assert result.kept["ts"].tolist() == [pd.Timestamp("2013-01-01 10:17", tz="UTC"),
                                          pd.Timestamp("2013-02-01 05:00", tz="UTC")]
    # And Feb 29 2013, month 13, 02:30 on the spring-forward day and minute 75 are rejected
    assert len(result.rejected) == 4
    assert result.rejected[REASON_COLUMN].str.contains("no valid America/New_York time").all()
    assert "DeriveTimestamp(target='ts'" in repr(stage)


def test_reprs_read_like_the_call() -> None:
    assert repr(Upper(columns=["carrier", "origin"])) == "Upper(columns=['carrier', 'origin'])"
    assert repr(Dedupe(["k"])) == "Dedupe(key=['k'], keep='first')"
    assert repr(Cast({"a": "Int64"})) == "Cast({'a': 'Int64'})"
    assert repr(DropRows("x > 1", reason="r")) == "DropRows('x > 1', reason='r')"
