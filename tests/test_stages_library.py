"""The cleaning-stage library: per-stage behaviour, configuration errors, golden fingerprints,
and properties over generated frames (rows are conserved, stages are deterministic)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etl.core.errors import StageError
from etl.core.parquet import from_parquet_bytes, to_parquet_bytes
from stages import (AllowedValues, CastSchema, ConvertTimezone, Dedupe, Explode, FillNulls,
                    Fingerprint, Flatten, Lower, MapValues, NormalizeUnicode, NormalizeWhitespace,
                    NotNull, ParseDate, ParseNumber, ParseTimestamp, Range, Regex, Rename,
                    SafeMongoKeys, Select, Stage, Unique, Validate, canonical_json, run_stages)
from stages.base import REASON_COLUMN, STAGE_COLUMN
from tests.stage_checks import check_stage, same
from stages.mongo import safe_names

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NY = "America/New_York"

# -- generated frames ----------------------------------------------------------------------

cells = st.one_of(st.none(), st.integers(-1000, 1000), st.integers(-2**70, 2**70),
                  st.floats(allow_nan=True, width=32), st.text(max_size=6),
                  st.sampled_from(["12", " 7 ", "1.5", "1,234.5", "1.234,5", "abc", "", "NaN",
                                   "yes", "2013-01-01", "01/02/2013", "e\u0301", "\uff21 \u00a0b",
                                   "2013-01-01T05:17:00Z", "9007199254740993"]))
scalars = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))
keys = st.sampled_from(["a", "b.c", "$d", "e", "b_c", "x.y.z"])
payloads = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=6)
items = st.one_of(st.none(), st.lists(scalars, max_size=3), st.just("not a list"),
                  st.just(np.array([1, 2])))
documents = st.one_of(st.none(), st.dictionaries(keys, payloads, max_size=4),
                      st.just('{"user": {"id": 7}, "tags": ["x"]}'), st.just("{broken"),
                      st.just("[1, 2]"), st.just(5))
times = st.one_of(st.none(), st.datetimes(min_value=dt.datetime(1990, 1, 1),
                                          max_value=dt.datetime(2030, 1, 1)))


@st.composite
def frames(draw: Any) -> pd.DataFrame:
    """Messy frames: mixed object cells, a nullable int, text, list and dict cells, zoned
    times, and an index that may be shuffled or repeat labels (rows are matched by position)."""
    n = draw(st.integers(0, 30))
    frame = pd.DataFrame({
        "a": pd.Series([draw(cells) for _ in range(n)], dtype=object),
        "n": pd.Series([draw(st.one_of(st.none(), st.integers(0, 3))) for _ in range(n)],
                       dtype="Int64"),
        "s": pd.Series([draw(st.one_of(st.none(), st.text(max_size=5))) for _ in range(n)],
                       dtype="string"),
        "items": pd.Series([draw(items) for _ in range(n)], dtype=object),
        "doc": pd.Series([draw(documents) for _ in range(n)], dtype=object),
        "t": pd.Series([draw(times) for _ in range(n)],
                       dtype="datetime64[ns]").dt.tz_localize("UTC"),
    })
    index = draw(st.sampled_from(["range", "repeated", "reversed"]))
    if index == "repeated":
        frame.index = [i // 2 for i in range(n)]
    elif index == "reversed":
        frame.index = list(range(n))[::-1]
    return frame


CONSERVING: list[Stage] = [
    Select(["a", "n", "_pos"]), Rename({"a": "z"}), FillNulls({"n": 0, "s": "?"}),
    Lower(["s"]), NormalizeWhitespace(["a", "s"]), NormalizeUnicode(["a"], form="NFKC"),
    ParseNumber("a"), ParseNumber("a", decimal=",", thousands=".", dtype="Int64", target="num"),
    ParseDate("a"), ParseDate("a", format="%m/%d/%Y", target="d"),
    ParseTimestamp("a", tz=NY), ConvertTimezone(["t"], tz=NY),
    CastSchema({"a": "Int64", "n": "int8", "s": "string[pyarrow]"}),
    CastSchema({"a": "float64[pyarrow]", "t": "timestamp[ms, tz=UTC][pyarrow]", "_pos": "int64"},
               extra="drop"),
    CastSchema({"a": "date32[pyarrow]", "n": "boolean"}),
    Dedupe(["n", "s"], keep="last"), MapValues("n", {1: "one", 2: "two"}),
    MapValues("s", {"a": "A"}, unmapped="null"), MapValues("a", {"abc": 1}, unmapped="reject"),
    Flatten("doc"), Flatten("doc", sep="_", keys=["doc_user_id", "doc_a"]),
    Fingerprint(["a", "n", "s", "items", "doc", "t"]), Fingerprint(["n"], algorithm="blake2b"),
    Validate([Range("n", min=1, max=2), AllowedValues("s", ["a", "b"]), Regex("s", r"\w+"),
              NotNull(["a"]), Unique(["n"])]),
    Range("a", min=-10, max=10), Range("t", min="2000-01-01T00:00Z"), Unique(["a"]),
    SafeMongoKeys(),
]


@SETTINGS
@given(frame=frames())
def test_every_stage_conserves_rows_and_is_deterministic(frame: pd.DataFrame) -> None:
    # Given any messy frame, When each stage of the library runs on it twice
    for stage in CONSERVING:
        # Then kept + rejected == input, rejects are untouched input rows with a reason,
        # the input is not mutated and both runs agree
        check_stage(stage, frame)


@SETTINGS
@given(frame=frames(), empty=st.sampled_from(["null", "reject"]))
def test_explode_accounts_for_every_row(frame: pd.DataFrame, empty: str) -> None:
    # Given any frame with list, null, empty and non-list cells
    tagged = frame.assign(_pos=np.arange(len(frame)))
    stage = Explode("items", empty=empty, position="line")  # type: ignore[arg-type]
    # When exploded (twice)
    result, again = stage.apply(tagged), stage.apply(tagged)
    rejected = [] if result.rejected is None else result.rejected["_pos"].tolist()
    # Then every input row is rejected or yields max(1, len(list)) rows, in input order
    for pos, cell in enumerate(frame["items"].array):
        if cell is None or (isinstance(cell, (list, np.ndarray)) and len(cell) == 0):
            expected = 0 if empty == "reject" else 1
        elif isinstance(cell, (list, np.ndarray)):
            expected = len(cell)
        else:
            expected = 0  # not a list
        assert result.kept["_pos"].tolist().count(pos) == expected
        assert (pos in rejected) == (expected == 0)
    assert result.kept["_pos"].tolist() == sorted(result.kept["_pos"])
    same(result.kept, again.kept)


#: Stages that can follow each other in any order: each reads columns the others leave alone
#: or keep in a compatible type.
CHAIN: list[Stage] = [
    NormalizeWhitespace(["s"]), NormalizeUnicode(["s"]), Lower(["s"]), FillNulls({"s": "?"}),
    MapValues("s", {"a": "A"}, unmapped="reject"), ParseNumber("a", target="num"),
    ParseDate("a", target="d"), ParseTimestamp("a", target="ts", tz=NY),
    CastSchema({"n": "Int8"}), Dedupe(["n", "s"]), Explode("items", position="line"),
    Flatten("doc"), SafeMongoKeys(), ConvertTimezone(["t"], tz=NY),
    Range("t", min="2000-01-01T00:00Z"), Fingerprint(["a", "n", "s", "t"]), Unique(["a"]),
    Validate([Range("n", min=1, max=2), Regex("s", r"\w+"), NotNull(["a"])]),
]


@SETTINGS
@given(frame=frames(), picks=st.lists(st.integers(0, len(CHAIN) - 1), min_size=1, max_size=6,
                                      unique=True))
def test_chains_account_for_rows_and_name_the_stage(frame: pd.DataFrame, picks: list[int]) -> None:
    # Given any chain of library stages
    chain = [CHAIN[i] for i in picks]
    # When it runs over any frame
    result = run_stages(frame, chain)
    # Then rows are conserved (Explode adds one row per further list element), and every
    # quarantined row carries its reason and the name of the stage that rejected it
    extra = sum(int((part["line"].fillna(0).astype("int64") > 0).sum())  # rows 2, 3... of a list
                for part in (result.clean, result.quarantined) if "line" in part.columns)
    assert len(result.clean) + len(result.quarantined) == len(frame) + extra
    assert set(result.quarantined[STAGE_COLUMN]) <= {stage.name for stage in chain}
    assert result.quarantined[REASON_COLUMN].notna().all()


@SETTINGS
@given(names=st.lists(st.text(alphabet="ab.$_2\x00", max_size=4), max_size=8), seed=st.randoms())
@example(names=["a", "a", "a_2", "a.b", "a_b", "a$b", "a_b_2"], seed=random.Random(1))
def test_safe_names_are_safe_distinct_and_order_free(names: list[str], seed: Any) -> None:
    # Given any column or key names, When made safe
    safe = safe_names(names)
    # Then no name holds "$", "." or NUL, no two are equal, and safe names are kept
    assert not any(c in name for name in safe for c in "$.\x00") and all(safe)
    assert len(set(safe)) == len(safe)
    for original, new in zip(names, safe):
        if original and not any(c in original for c in "$.\x00") and names.count(original) == 1:
            assert new == original
    # And the name each key gets does not depend on the order the keys came in
    shuffled = list(dict.fromkeys(names))
    seed.shuffle(shuffled)
    unique = list(dict.fromkeys(names))
    assert dict(zip(shuffled, safe_names(shuffled))) == dict(zip(unique, safe_names(unique)))


# -- columns and values --------------------------------------------------------------------

def test_select_and_rename_say_which_columns_are_unknown() -> None:
    # Given a frame with columns a and b
    frame = pd.DataFrame({"a": [1], "b": [2]})
    # When selecting or renaming a column that is not there, Then a StageError names it
    with pytest.raises(StageError, match=r"^Rename\(\{'zz': 'y'\}\): unknown column\(s\) 'zz'; "
                                         r"columns are: a, b$"):
        Rename({"zz": "y"}).apply(frame)
    with pytest.raises(StageError, match=r"^Select\(columns=\['b', 'zz'\]\): unknown column"):
        Select(["b", "zz"]).apply(frame)
    # And known ones are renamed and selected in the order asked
    assert Select(["b", "a"]).apply(Rename({"a": "x"}).apply(frame).kept.rename(
        columns={"x": "a"})).kept.columns.tolist() == ["b", "a"]


def test_fill_nulls_fills_per_column_and_keeps_dtypes() -> None:
    # Given nulls in an integer, a float and a text column
    frame = pd.DataFrame({"qty": pd.Series([1, None], dtype="Int64"), "price": [2.5, np.nan],
                          "country": ["FR", None], "other": [None, None]})
    # When filled per column
    kept = FillNulls({"qty": 0, "price": 0.0, "country": "unknown"}).apply(frame).kept
    # Then each column gets its own default and keeps its dtype; other columns are untouched
    assert kept["qty"].tolist() == [1, 0] and str(kept["qty"].dtype) == "Int64"
    assert kept["price"].tolist() == [2.5, 0.0] and kept["country"].tolist() == ["FR", "unknown"]
    assert kept["other"].isna().all()
    assert repr(FillNulls({"qty": 0})) == "FillNulls({'qty': 0})"


def test_fill_nulls_refuses_values_that_do_not_fit() -> None:
    frame = pd.DataFrame({"qty": pd.Series([1, None], dtype="Int64")})
    # A text default for an integer column is a configuration error, not a silent upcast
    with pytest.raises(StageError, match=r"value 'none' does not fit column 'qty' of dtype Int64"):
        FillNulls({"qty": "none"}).apply(frame)
    # And so are null or non-scalar defaults, refused when the stage is built
    with pytest.raises(StageError, match="must be a non-null scalar"):
        FillNulls({"qty": None})
    with pytest.raises(StageError, match="must be a non-null scalar"):
        FillNulls({"qty": [0]})
    # But a column that is all null in this batch (no type of its own) takes the default
    all_null = FillNulls({"x": "n/a"}).apply(pd.DataFrame({"x": [np.nan, np.nan]})).kept
    assert all_null["x"].tolist() == ["n/a", "n/a"]


def test_map_values_keep_null_or_reject_unmapped() -> None:
    # Given status codes, one unknown and one null
    frame = pd.DataFrame({"status": ["A", "C", "X", None]})
    mapping = {"A": "active", "C": "closed"}
    # When unmapped values are kept, nulled, or rejected
    keep = MapValues("status", mapping).apply(frame)
    null = MapValues("status", mapping, unmapped="null").apply(frame)
    reject = MapValues("status", mapping, unmapped="reject", target="label").apply(frame)
    # Then mapped values change, and the unknown "X" is kept, nulled or rejected with its value
    assert keep.kept["status"].tolist()[:3] == ["active", "closed", "X"]
    assert null.kept["status"].tolist()[:2] == ["active", "closed"]
    assert null.kept["status"].isna().tolist() == [False, False, True, True]
    assert str(null.kept["status"].dtype) == "string"
    assert reject.kept["label"].tolist()[:2] == ["active", "closed"]
    assert reject.kept["status"].tolist()[:2] == ["A", "C"]  # target= leaves the source
    assert reject.rejected[REASON_COLUMN].tolist() == [
        "map_values: column 'status' value 'X' is not in the mapping"]
    # And a null is never "unmapped"
    assert len(reject.kept) == 3
    with pytest.raises(StageError, match="unmapped must be one of keep, null, reject"):
        MapValues("status", mapping, unmapped="drop")  # type: ignore[arg-type]


def test_map_values_result_dtype_follows_the_mapping_not_the_batch() -> None:
    # Given two batches, one where every code maps and one with nulls only
    mapping = {"y": True, "n": False}
    full = MapValues("ok", mapping, unmapped="null").apply(pd.DataFrame({"ok": ["y", "n"]}))
    empty = MapValues("ok", mapping, unmapped="null").apply(pd.DataFrame({"ok": [None, None]}))
    # Then both come out "boolean", so the Parquet files of a run share one schema
    assert str(full.kept["ok"].dtype) == str(empty.kept["ok"].dtype) == "boolean"
    assert full.kept["ok"].tolist() == [True, False]


# -- text ----------------------------------------------------------------------------------

def test_normalize_whitespace_and_unicode() -> None:
    # Given text with tabs, newlines, non-breaking spaces, decomposed and full-width letters
    frame = pd.DataFrame({"city": ["  New\u00a0\tYork \n", "Sa\u0303o  Paulo", None,
                                   "\uff21\ufb01"]})
    # When whitespace is normalised, Then runs become one space and the ends are trimmed
    spaced = NormalizeWhitespace(["city"]).apply(frame).kept["city"]
    assert spaced.tolist()[:2] == ["New York", "Sa\u0303o Paulo"] and spaced.isna().tolist()[2]
    # When NFC-normalised, Then "a" + combining tilde becomes one character
    nfc = NormalizeUnicode("city").apply(frame).kept["city"]
    assert nfc[1] == "S\u00e3o  Paulo" and nfc[3] == "\uff21\ufb01"
    # When NFKC-normalised, Then compatibility forms fold too
    assert NormalizeUnicode("city", form="NFKC").apply(frame).kept["city"][3] == "Afi"
    assert repr(NormalizeUnicode(["city"], form="NFKC")) == \
        "NormalizeUnicode(columns=['city'], form='NFKC')"
    with pytest.raises(StageError, match="form must be one of NFC, NFKC, NFD, NFKD"):
        NormalizeUnicode("city", form="nfc")  # type: ignore[arg-type]


# -- numbers, dates, schema ----------------------------------------------------------------

def test_parse_number_with_explicit_separators() -> None:
    # Given amounts written the German way, with junk and a US-formatted value
    frame = pd.DataFrame({"amount": ["1.234,5", " -7 ", "0,25", "1,234.50", "12.34", None, "x"]})
    # When parsed with decimal "," and thousands "."
    result = ParseNumber("amount", decimal=",", thousands=".").apply(frame)
    # Then the German values are numbers, a null stays null
    assert result.kept["amount"].tolist() == [1234.5, -7.0, 0.25, pd.NA]
    assert str(result.kept["amount"].dtype) == "Float64"
    # And values that do not follow the layout are rejected with the value, never guessed
    # ("12.34" has a thousands group of two digits)
    assert result.rejected[REASON_COLUMN].tolist() == [
        f"parse_number: column 'amount' value '{v}' does not parse as Float64 "
        f"(decimal ',', thousands '.')" for v in ["1,234.50", "12.34", "x"]]
    assert result.rejected["amount"].tolist() == ["1,234.50", "12.34", "x"]


def test_parse_number_integers_are_exact() -> None:
    # Given integers beyond float precision and a fraction
    frame = pd.DataFrame({"n": ["9,007,199,254,740,993", "1.5", "10"]})
    result = ParseNumber("n", thousands=",", dtype="Int64", target="m").apply(frame)
    # Then integers are exact, and 1.5 is not an Int64
    assert result.kept["m"].tolist() == [9007199254740993, 10]
    assert result.rejected[REASON_COLUMN].tolist() == [
        "parse_number: column 'n' value '1.5' does not parse as Int64 (decimal '.', thousands ',')"]


def test_parse_number_configuration_errors() -> None:
    with pytest.raises(StageError, match="decimal and thousands separators must differ"):
        ParseNumber("a", decimal=",", thousands=",")
    with pytest.raises(StageError, match="decimal must be one character"):
        ParseNumber("a", decimal="..")
    with pytest.raises(StageError, match="thousands must be one character other than a digit"):
        ParseNumber("a", thousands="0")
    with pytest.raises(StageError, match="dtype must be one of Float64, Int64"):
        ParseNumber("a", dtype="float")  # type: ignore[arg-type]
    assert repr(ParseNumber("a", decimal=",", thousands=".")) == \
        "ParseNumber('a', decimal=',', thousands='.')"


def test_parse_date_with_format_and_zone() -> None:
    # Given day-first dates, an impossible date and junk
    frame = pd.DataFrame({"d": ["05/01/2013", "31/12/2013", "29/02/2013", "2013-01-05", None],
                          "at": ["2013-01-01T23:30:00-0500"] * 5})
    # When parsed with an explicit format
    result = ParseDate("d", format="%d/%m/%Y").apply(frame)
    # Then dates are dates (a Parquet DATE), and bad ones are rejected with the value
    assert result.kept["d"].tolist()[:2] == [dt.date(2013, 1, 5), dt.date(2013, 12, 31)]
    assert str(result.kept["d"].dtype) == "date32[day][pyarrow]"
    assert result.rejected[REASON_COLUMN].tolist() == [
        "parse_date: column 'd' value '29/02/2013' is not a date (%d/%m/%Y)",
        "parse_date: column 'd' value '2013-01-05' is not a date (%d/%m/%Y)"]
    # And a time with an offset is converted to the stage's zone before its date is taken:
    # 23:30 in New York is already the next day in UTC
    zoned = dict(format="%Y-%m-%dT%H:%M:%S%z", target="day")
    assert ParseDate("at", **zoned).apply(frame).kept["day"][0] == dt.date(2013, 1, 2)
    assert ParseDate("at", **zoned, tz=NY).apply(frame).kept["day"][0] == dt.date(2013, 1, 1)
    with pytest.raises(StageError, match="unknown time zone 'Nowhere'"):
        ParseDate("d", tz="Nowhere")


def test_parse_timestamp_then_convert_time_zone_explicitly() -> None:
    # Given New York wall times
    frame = pd.DataFrame({"t": ["2013-01-01 05:17", "2013-07-01 05:17"]})
    # When read as New York time (stored as UTC) and then shown in Tokyo time
    chain: list[Stage] = [ParseTimestamp("t", format="%Y-%m-%d %H:%M", tz=NY),
                          ConvertTimezone("t", tz="Asia/Tokyo")]
    out = run_stages(frame, chain).clean["t"]
    # Then the output is zone aware and the instants are unchanged by the conversion
    assert str(out.dt.tz) == "Asia/Tokyo"
    assert out.tolist() == [pd.Timestamp("2013-01-01 10:17", tz="UTC"),
                            pd.Timestamp("2013-07-01 09:17", tz="UTC")]
    assert out[0].hour == 19
    # And a column without a zone is refused: its wall times could be anywhere
    with pytest.raises(StageError, match=r"column 't' is .*not a time zone aware timestamp"):
        ConvertTimezone("t", tz="UTC").apply(frame)
    assert repr(chain[1]) == "ConvertTimezone(columns=['t'], tz='Asia/Tokyo')"


def test_month_names_are_read_only_where_they_cannot_change_meaning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given dates with English month names
    frame = pd.DataFrame({"d": ["Jan 05 2013", "Mär 05 2013"]})
    stage = ParseDate("d", format="%b %d %Y")
    # When parsed in the C locale, Then English names are read and others rejected
    result = stage.apply(frame)
    assert result.kept["d"].tolist() == [dt.date(2013, 1, 5)] and len(result.rejected) == 1
    # And under another LC_TIME locale the stage refuses rather than read names differently
    import stages.dates
    monkeypatch.setattr(stages.dates.locale, "setlocale", lambda *args: "de_DE.UTF-8")
    with pytest.raises(StageError, match="uses month/day names, which depend on the locale"):
        stage.apply(frame)
    # But numeric formats never depend on the locale
    assert ParseDate("d", format="%Y").apply(pd.DataFrame({"d": ["2013"]})).kept["d"][0] == \
        dt.date(2013, 1, 1)


def test_convert_timezone_on_pyarrow_timestamps() -> None:
    frame = pd.DataFrame({"t": pd.Series([pd.Timestamp("2013-01-01 10:00", tz="UTC"), None])
                          .astype("timestamp[us, tz=UTC][pyarrow]")})
    out = ConvertTimezone("t", tz="Asia/Tokyo").apply(frame).kept["t"]
    assert str(out.dtype) == "timestamp[us, tz=Asia/Tokyo][pyarrow]"
    assert out[0] == pd.Timestamp("2013-01-01 19:00", tz="Asia/Tokyo") and out.isna()[1]


def test_cast_schema_gives_exact_dtypes_and_rejects_misfits() -> None:
    # Given text columns, some values that do not fit
    frame = pd.DataFrame({"id": ["1", "2", "3", "4", None, "6", "7"],
                          "qty": ["10", "2.5", "7", "1", "1", "300", "1"],
                          "price": ["1.5", "2", "3", "x", "5", "2", "2"],
                          "ok": ["yes", "no", "true", "maybe", None, "no", "n"],
                          "day": ["2013-01-01", "2013-01-02", "2013-01-03 10:00", "bad", None,
                                  "2013-01-06", "2013-01-07"],
                          "note": ["a", None, "c", "d", "e", None, None]})
    schema = {"id": "int64", "qty": "Int8", "price": "Float64", "ok": "boolean",
              "day": "date32[pyarrow]", "note": "string[pyarrow]"}
    # When cast to the schema
    result = CastSchema(schema).apply(frame)
    # Then kept rows have exactly the declared dtypes
    assert [str(t) for t in result.kept.dtypes] == [
        "int64", "Int8", "Float64", "boolean", "date32[day][pyarrow]", "string"]
    assert result.kept["id"].tolist() == [1, 7] and result.kept["qty"].tolist() == [10, 1]
    assert result.kept["day"].tolist() == [dt.date(2013, 1, 1), dt.date(2013, 1, 7)]
    # And every misfit is rejected with the (first) column and value: 2.5 is not an Int8,
    # "2013-01-03 10:00" is not a date, "x" not a Float64, a null cannot be stored in a
    # NumPy int64, and 300 overflows an Int8
    assert result.rejected[REASON_COLUMN].tolist() == [
        "cast_schema: column 'qty' value '2.5' does not fit Int8",
        "cast_schema: column 'day' value '2013-01-03 10:00' does not fit date32[pyarrow]",
        "cast_schema: column 'price' value 'x' does not fit Float64",
        "cast_schema: column 'id' value '<null>' does not fit int64",
        "cast_schema: column 'qty' value '300' does not fit Int8"]
    assert result.rejected["qty"].tolist() == ["2.5", "7", "1", "1", "300"]  # as they arrived


def test_cast_schema_pyarrow_dtypes_and_extra_columns() -> None:
    frame = pd.DataFrame({"n": ["1", "x"], "t": ["2013-01-01T05:00:00-05:00", None], "z": [1, 2]})
    schema = {"n": "int64[pyarrow]", "t": "timestamp[us, tz=UTC][pyarrow]"}
    result = CastSchema(schema, extra="drop").apply(frame)
    assert list(result.kept.columns) == ["n", "t"]
    assert [str(t) for t in result.kept.dtypes] == ["int64[pyarrow]",
                                                    "timestamp[us, tz=UTC][pyarrow]"]
    assert result.kept["t"][0] == pd.Timestamp("2013-01-01 10:00", tz="UTC")
    assert result.rejected[REASON_COLUMN].tolist() == [
        "cast_schema: column 'n' value 'x' does not fit int64[pyarrow]"]
    # The kept rows survive the staging round trip through Parquet with their types
    back = from_parquet_bytes(to_parquet_bytes(result.kept))
    assert back["n"].tolist() == [1]
    with pytest.raises(StageError, match=r"column\(s\) not in the schema: 'z'"):
        CastSchema(schema, extra="error").apply(frame)
    with pytest.raises(StageError, match="column 'n': unknown dtype 'Int65'"):
        CastSchema({"n": "Int65"})
    with pytest.raises(StageError, match="not supported; pyarrow dtypes supported are"):
        CastSchema({"n": "binary[pyarrow]"})
    with pytest.raises(StageError, match=r"unknown column\(s\) 'q'"):
        CastSchema({"q": "Int64"}).apply(frame)


# -- rows ----------------------------------------------------------------------------------

def test_dedupe_keep_first_or_last() -> None:
    # Given two versions of order 1
    frame = pd.DataFrame({"order": [1, 2, 1], "v": ["old", "x", "new"]})
    # Then keep="first" keeps the old one, keep="last" the new one; the other is quarantined
    assert Dedupe("order").apply(frame).kept["v"].tolist() == ["old", "x"]
    last = Dedupe("order", keep="last").apply(frame)
    assert last.kept["v"].tolist() == ["x", "new"] and last.rejected["v"].tolist() == ["old"]


def test_explode_lists_to_rows_with_positions() -> None:
    # Given orders with two lines, no lines, and a value that is not a list
    frame = pd.DataFrame({"order": [1, 2, 3], "lines": [["a", "b"], [], "oops"]})
    # When exploded with a position column
    result = Explode("lines", position="line_no").apply(frame)
    # Then each element is a row with its place; an empty list keeps its order with a null
    assert result.kept["order"].tolist() == [1, 1, 2]
    assert result.kept["lines"].tolist() == ["a", "b", None]
    assert result.kept["line_no"].tolist() == [0, 1, pd.NA]
    assert result.rejected[REASON_COLUMN].tolist() == [
        "explode: column 'lines' value 'oops' is not a list"]
    # And with empty="reject" the order without lines is quarantined instead
    strict = Explode("lines", empty="reject").apply(frame)
    assert strict.rejected["order"].tolist() == [2, 3]
    with pytest.raises(StageError, match="empty must be 'null' or 'reject'"):
        Explode("lines", empty="drop")  # type: ignore[arg-type]


def test_flatten_api_payloads() -> None:
    # Given payloads as dicts and as JSON text, with a null, bad JSON and a JSON list
    frame = pd.DataFrame({"id": [1, 2, 3, 4, 5], "payload": [
        {"user": {"id": 7, "name": "Ann"}, "tags": ["x"]},
        '{"user": {"id": 8}, "extra": true}', None, "{nope", "[1]"]})
    # When flattened with dotted names
    result = Flatten("payload").apply(frame)
    # Then each leaf is a column, sorted by name, where the payload column was
    assert result.kept.columns.tolist() == ["id", "payload.extra", "payload.tags",
                                            "payload.user.id", "payload.user.name"]
    assert result.kept["payload.user.id"].tolist() == [7, 8, None]
    assert result.kept["payload.tags"].tolist() == [["x"], None, None]
    assert result.rejected[REASON_COLUMN].tolist() == [
        "flatten: column 'payload' value '{nope' is not JSON",
        "flatten: column 'payload' value '[1]' is not a JSON object"]
    # And with sep="_", no prefix and fixed keys every batch gets the same columns
    fixed = Flatten("payload", sep="_", prefix=False, keys=["user_id", "missing"]).apply(frame)
    assert fixed.kept.columns.tolist() == ["id", "user_id", "missing"]
    assert fixed.kept["missing"].isna().all()
    with pytest.raises(StageError, match=r"flattened column\(s\) 'id' would replace"):
        Flatten("payload", prefix=False).apply(pd.DataFrame({"id": [1], "payload": [{"id": 2}]}))


# -- fingerprint ---------------------------------------------------------------------------

GOLDEN = pd.DataFrame({
    "id": pd.Series([1, 2, None], dtype="Int64"),
    "amount": [12.5, 3.0, np.nan],
    "city": ["Z\u00fcrich", "S\u00e3o Paulo", None],
    "at": pd.Series([pd.Timestamp("2013-01-01 05:15", tz=NY),
                     pd.Timestamp("2013-07-04 23:59:59.5", tz=NY), pd.NaT]),
})
#: Checked against coreutils: printf '%s' '<canonical text>' | sha256sum (and b2sum).
GOLDEN_SHA256 = ["10a5a0532298f24a347d487860192535e0c7209cabf453d590d0bdac5ecad8b0",
                 "ebbd8f142cbefdda136affa3b50d44b408440e78d32bbe860a0e69b4e607b4f3",
                 "19278c362670eaf35654416f3fcdbb86535e90817d1d8407a1c5ba0eeef1c163"]
GOLDEN_BLAKE2B_0 = ("5faa651be87c3d7c62511c4ca9b9162689d2a5b88db2702f1d7654641cb6a1e9"
                    "0943cfecdfda8bf0285c56ac1a3a2f4d3f0102eb8f3598d922a73b945093a9ec")
COLUMNS = ["id", "amount", "city", "at"]


def test_fingerprint_golden_values() -> None:
    # Given a fixed frame (nullable ints, floats, accented text, zoned times, nulls)
    # When fingerprinted, Then the canonical text and the digests are exactly these
    assert canonical_json(GOLDEN.iloc[0].to_dict()) == (
        '{"amount":12.5,"at":{"$timestamp":"2013-01-01T10:15:00+00:00"},'
        '"city":"Z\u00fcrich","id":1}')
    assert canonical_json(GOLDEN.iloc[2].to_dict()) == \
        '{"amount":null,"at":null,"city":null,"id":null}'
    assert Fingerprint(COLUMNS).apply(GOLDEN).kept["fingerprint"].tolist() == GOLDEN_SHA256
    blake = Fingerprint(COLUMNS, algorithm="blake2b", target="h").apply(GOLDEN).kept["h"]
    assert blake[0] == GOLDEN_BLAKE2B_0


def test_fingerprint_is_the_same_in_other_processes_and_hash_seeds() -> None:
    # Given fresh interpreters with different PYTHONHASHSEEDs
    code = ("import json, pandas as pd, numpy as np\n"
            "from tests.test_stages_library import GOLDEN, COLUMNS\n"
            "from stages import Fingerprint\n"
            "print(json.dumps(Fingerprint(COLUMNS).apply(GOLDEN).kept['fingerprint'].tolist()))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TZ": "Asia/Kolkata", "LC_ALL": "C.UTF-8"}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True,
                             capture_output=True, text=True).stdout
        # Then they compute the same digests
        assert json.loads(out) == GOLDEN_SHA256


def test_fingerprint_ignores_how_pandas_typed_a_batch() -> None:
    # Given the same row read as int64 in one batch and as float64 (a null elsewhere) in another,
    # and with its columns in another order
    ints = pd.DataFrame({"a": [1], "b": ["x"]})
    floats = pd.DataFrame({"b": ["x", "y"], "a": [1.0, np.nan]})
    first = Fingerprint(["a", "b"]).apply(ints).kept["fingerprint"][0]
    # Then the fingerprint is the same; and a different value gives a different one
    assert Fingerprint(["b", "a"]).apply(floats).kept["fingerprint"][0] == first
    assert Fingerprint(["a", "b"]).apply(pd.DataFrame({"a": [2], "b": ["x"]})).kept[
        "fingerprint"][0] != first
    # And text "1" is not the number 1
    assert Fingerprint(["a", "b"]).apply(pd.DataFrame({"a": ["1"], "b": ["x"]})).kept[
        "fingerprint"][0] != first


def test_fingerprint_rejects_values_it_cannot_encode_and_bad_options() -> None:
    frame = pd.DataFrame({"a": [1, object()]})
    result = Fingerprint("a").apply(frame)
    assert result.kept["a"].tolist() == [1]
    reason = result.rejected[REASON_COLUMN].iloc[0]
    assert reason.startswith("fingerprint: column 'a' value '<object object at")
    assert reason.endswith("of type object has no canonical encoding")
    with pytest.raises(StageError, match="algorithm must be one of sha256, blake2b"):
        Fingerprint("a", algorithm="md5")  # type: ignore[arg-type]
    with pytest.raises(StageError, match="target 'a' is one of the hashed columns"):
        Fingerprint("a", target="a")
    assert repr(Fingerprint(["a", "b"], algorithm="blake2b")) == \
        "Fingerprint(columns=['a', 'b'], algorithm='blake2b')"


# -- validation ----------------------------------------------------------------------------

def test_validate_quarantines_with_rule_column_and_value() -> None:
    # Given rows breaking one, two or no rules
    frame = pd.DataFrame({"id": [1, 2, 2, 4, None], "age": [30, -1, 200, "x", None],
                          "zip": ["12345", "1234", None, "54321", "abcde"],
                          "state": ["NY", "NY", "ZZ", None, "CA"]})
    stage = Validate([Range("age", min=0, max=130), AllowedValues("state", ["NY", "CA"]),
                      Regex("zip", r"\d{5}"), NotNull("id"), Unique("id")])
    # When validated
    result = stage.apply(frame)
    # Then only the valid rows are output
    assert result.kept["age"].tolist() == [30] and result.kept["id"].tolist() == [1.0]
    # And each failing row lists every rule it broke, with the column and the value
    assert result.rejected[REASON_COLUMN].tolist() == [
        "range: column 'age' value '-1' is below the minimum 0; "
        "regex: column 'zip' value '1234' does not match the pattern \\d{5}; "
        "unique: column 'id' value '2.0' appears 2 times",
        "range: column 'age' value '200' is above the maximum 130; "
        "allowed_values: column 'state' value 'ZZ' is not one of the allowed values; "
        "unique: column 'id' value '2.0' appears 2 times",
        "range: column 'age' value 'x' is not a number",
        "regex: column 'zip' value 'abcde' does not match the pattern \\d{5}; "
        "not-null: column 'id' is null"]
    assert repr(stage) == ("Validate([Range('age', min=0, max=130), AllowedValues('state', "
                           "['NY', 'CA']), Regex('zip', '\\\\d{5}'), NotNull(columns=['id']), "
                           "Unique(columns=['id'])])")


def test_rules_work_as_stages_and_on_times_and_composite_keys() -> None:
    times = pd.DataFrame({"t": pd.to_datetime(["2012-12-31", "2013-06-01"]).tz_localize("UTC"),
                          "k1": [1, 1], "k2": ["a", "a"]})
    late = Range("t", min="2013-01-01T00:00Z").apply(times)
    assert late.kept["t"].tolist() == [pd.Timestamp("2013-06-01", tz="UTC")]
    assert late.rejected[REASON_COLUMN].str.startswith(
        "range: column 't' value '2012-12-31 00:00:00+00:00' is below the minimum").all()
    both = Unique(["k1", "k2"]).apply(times)
    assert len(both.kept) == 0 and both.rejected[REASON_COLUMN].tolist() == [
        "unique: columns (k1, k2) value '(1, 'a')' appears 2 times"] * 2
    with pytest.raises(StageError, match="a column with a time zone needs bounds with one"):
        Range("t", min="2013-01-01").apply(times)
    with pytest.raises(StageError, match="number bounds do not apply"):
        Range("t", min=0).apply(times)


def test_rule_configuration_errors() -> None:
    with pytest.raises(StageError, match="give min, max or both"):
        Range("a")
    with pytest.raises(StageError, match="min is greater than max"):
        Range("a", min=5, max=1)
    with pytest.raises(StageError, match="bad pattern"):
        Regex("a", "(")
    with pytest.raises(StageError, match="values must be a non-empty list"):
        AllowedValues("a", "NY")
    with pytest.raises(StageError, match="rules must be a non-empty list"):
        Validate([])
    with pytest.raises(StageError, match="rules must be a non-empty list"):
        Validate([Dedupe("a")])  # type: ignore[list-item]
    with pytest.raises(StageError, match=r"^Range\('zz', min=0\): unknown column"):
        Validate([Range("zz", min=0)]).apply(pd.DataFrame({"a": [1]}))


# -- MongoDB keys --------------------------------------------------------------------------

def test_safe_mongo_keys_renames_columns_and_nested_keys_deterministically() -> None:
    # Given columns and payload keys with "$" and ".", some colliding once made safe
    doc = {"$set": {"x.y": 1, "x_y": 2}, "items": [{"a.b": 1}], 3: "int key"}
    frame = pd.DataFrame({"a.b": [1], "a$b": [2], "a_b": [3], "doc": [doc]})
    # When made safe
    kept = SafeMongoKeys().apply(frame).kept
    # Then the safe name stays, renamed ones get suffixes in the sorted order of the originals
    assert kept.columns.tolist() == ["a_b_3", "a_b_2", "a_b", "doc"]
    assert kept["doc"][0] == {"_set": {"x_y_2": 1, "x_y": 2}, "items": [{"a_b": 1}],
                              "3": "int key"}
    # And the same keys in another order get the same names; the input is not changed
    reordered = {"x_y": 2, "x.y": 1}
    assert SafeMongoKeys()._safe(reordered) == {"x_y": 2, "x_y_2": 1}
    assert frame["doc"][0] is doc and "$set" in doc
    # And with nested=False only the columns change
    assert SafeMongoKeys(nested=False).apply(frame).kept["doc"][0] is doc
    assert SafeMongoKeys(replacement="-").apply(frame).kept.columns.tolist() == [
        "a-b-2", "a-b", "a_b", "doc"]
    with pytest.raises(StageError, match="replacement must be non-empty text"):
        SafeMongoKeys(replacement=".")


# -- every new stage -----------------------------------------------------------------------

def test_new_stages_name_unknown_columns() -> None:
    frame = pd.DataFrame({"a": [1]})
    for stage in (FillNulls({"zz": 0}), MapValues("zz", {}), NormalizeWhitespace("zz"),
                  NormalizeUnicode("zz"), ParseNumber("zz"), ParseDate("zz"),
                  ConvertTimezone("zz", tz="UTC"), CastSchema({"zz": "Int64"}), Explode("zz"),
                  Flatten("zz"), Fingerprint("zz"), Range("zz", min=0), AllowedValues("zz", [1]),
                  Regex("zz", "x"), Unique("zz"), Validate([Unique("zz")])):
        with pytest.raises(StageError, match=r"'zz'.*columns are: a"):
            stage.apply(frame)


def test_reprs_read_like_the_call_that_built_them() -> None:
    built = [FillNulls({"q": 0}), MapValues("s", {"a": 1}, unmapped="reject"),
             ParseNumber("a", thousands=","), ParseDate("d", format="%d/%m/%Y", tz=NY),
             ConvertTimezone(["t"], tz="UTC"), CastSchema({"a": "Int64"}, extra="drop"),
             Explode("l", position="i"), Flatten("p", sep="_", keys=["a"]),
             Fingerprint(["a"]), Range("a", min=0), AllowedValues("a", [1, 2]),
             Regex("a", "x+", full=False), Unique(["a", "b"]), Validate([Range("a", max=1)]),
             SafeMongoKeys(replacement="-"), NormalizeWhitespace(["a"]),
             NormalizeUnicode(["a"], form="NFKD")]
    namespace = {type(s).__name__: type(s) for s in built} | {"NY": NY}
    for stage in built:
        assert isinstance(stage, Stage) and stage.name.isidentifier()
        # eval of the repr builds an equal stage (dataclass equality) with the same repr
        again = eval(repr(stage), namespace)  # noqa: S307 - our own reprs
        assert repr(again) == repr(stage)
        if hasattr(stage, "__dataclass_fields__"):
            assert again == stage
    assert repr(Explode("l", position="i")) == "Explode('l', position='i')"
    assert repr(CastSchema({"a": "Int64"}, extra="drop")) == \
        "CastSchema({'a': 'Int64'}, extra='drop')"


@SETTINGS
@given(frame=frames())
def test_fingerprint_is_the_hash_of_the_canonical_json_of_each_row(frame: pd.DataFrame) -> None:
    # Given any frame, When fingerprinted over every column
    columns = ["a", "n", "s", "items", "doc", "t"]
    hashed = Fingerprint(columns).apply(frame).kept["fingerprint"].tolist()
    # Then each digest is sha256 of the documented canonical JSON of that row
    rows = frame[columns].to_dict("records")
    assert hashed == [hashlib.sha256(canonical_json(r).encode()).hexdigest() for r in rows]


def _keys(value: Any) -> list[str]:
    """Every dict key at any depth of `value`."""
    if isinstance(value, dict):
        return [*value] + [k for v in value.values() for k in _keys(v)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [k for v in value for k in _keys(v)]
    return []


def _leaves(value: Any) -> list[str]:
    """Every non-container value of `value`, in order, as text."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [repr(value)]


@SETTINGS
@given(docs=st.lists(st.dictionaries(keys, payloads, max_size=4), max_size=6))
def test_safe_mongo_keys_leaves_no_unsafe_key_at_any_depth(docs: list[dict[str, Any]]) -> None:
    # Given API payloads nested at any depth, some keys with "$" or "."
    frame = pd.DataFrame({"doc": pd.Series(docs, dtype=object)})
    # When made safe
    out = SafeMongoKeys().apply(frame).kept["doc"].tolist()
    # Then no key holds "$" or ".", each dict has as many keys as before, and values are kept
    for before, after in zip(docs, out):
        assert not any(c in k for k in _keys(after) for c in "$.")
        assert len(_keys(after)) == len(_keys(before))
        assert _leaves(after) == _leaves(before)


def test_safe_mongo_keys_output_loads_through_the_mongo_sink(  # type: ignore[no-untyped-def]
        mongo_client, mongo_db_name: str) -> None:
    from etl.sinks.mongo import MongoSink

    # Given an API payload column whose keys MongoDB would read as operators and paths
    frame = pd.DataFrame({"order.id": [1, 2], "doc": [{"$set": {"x.y": 1}, "tags": ["a"]},
                                                      {"ok": {"a.b": 2}}]})
    sink = MongoSink("mongodb://db", collection="c", key=["order_id"], client=mongo_client,
                     database=mongo_db_name)
    try:
        # When made safe and loaded
        from tests.contracts import sequenced

        sink.write_batch(sequenced(SafeMongoKeys().apply(frame).kept), run_id="r", shard=0, batch=0)
        # Then the documents hold the safe names
        held = sink.read_all().sort_values("order_id")
        assert held["doc"].tolist() == [{"_set": {"x_y": 1}, "tags": ["a"]}, {"ok": {"a_b": 2}}]
    finally:
        mongo_client.drop_database(mongo_db_name)
