"""Schema drift: batches whose columns or types differ from the pipeline's expectation are
reported, and evolve, freeze or discard as the pipeline says."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

import etl
from etl.drift import Drift, compare, kind_of_dtype, normalise_kind
from etl.core.errors import ConfigError
from etl.stores.objects import open_objects
from etl.pipeline import Pipeline
from etl.sinks.parquet import ParquetSink
from etl.sources.files import FileSource
from etl.stores import Stores
from etl.stores.state import open_state
from shards import RangeShards

EXPECTED = {"id": "integer", "name": "string", "amount": "float"}


def test_kinds_of_dtypes_and_declared_names() -> None:
    assert kind_of_dtype(pd.Series([1]).dtype) == "integer"
    assert kind_of_dtype(pd.Series([1], dtype="Int32").dtype) == "integer"
    assert kind_of_dtype(pd.Series(["a"]).dtype) == "string"
    assert kind_of_dtype(pd.Series(pd.to_datetime(["2013-01-01"], utc=True)).dtype) == "datetime"
    assert [normalise_kind(n) for n in ("int64", "Int64", "int64[pyarrow]", "double", "float",
                                        "object", "bool")] == [
        "integer", "integer", "integer", "float", "float", "string", "boolean"]
    with pytest.raises(ConfigError, match="unknown type 'decimalish'"):
        normalise_kind("decimalish")


def test_compare_names_missing_extra_and_changed_columns() -> None:
    # Given a frame with amount as text, no name, and an extra column
    frame = pd.DataFrame({"id": [1, 2], "amount": ["1.5", "x"], "note": ["a", None]})
    # When compared to the expectation
    drift = compare(frame, EXPECTED)
    # Then every difference is named
    assert drift.missing == ["name"] and drift.extra == ["note"]
    assert drift.changed == {"amount": ("float", "string")}
    assert drift.describe() == "missing name; unexpected note; changed amount float -> string"
    # And an all-null column is no drift, nor is int32 vs int64
    same = pd.DataFrame({"id": pd.Series([1], dtype="int32"), "name": ["n"], "amount": [None]})
    assert not compare(same, EXPECTED) and isinstance(compare(same, EXPECTED), Drift)


def test_how_pandas_stores_nulls_and_whole_numbers_is_not_drift() -> None:
    # Given batches as they arrive from Parquet: an integer column with a null (float64), a
    # boolean column with a null (object), and whole-number floats parsed as integers
    expected = {"n": "integer", "flag": "boolean", "price": "float"}
    batch = pd.DataFrame({"n": [1.0, None], "flag": [True, None], "price": [3, 4]})
    # Then none of them is drift
    assert not compare(batch, expected), compare(batch, expected).describe()
    # But fractions in an integer column, or text in a boolean one, are
    real = pd.DataFrame({"n": [1.5, None], "flag": ["yes", None], "price": [3, 4]})
    assert compare(real, expected).changed == {"n": ("integer", "float"),
                                               "flag": ("boolean", "string")}
    # And the same holds for pandas' nullable floats, and for a column of nulls only
    nullable = pd.DataFrame({"n": pd.array([2.0, None], dtype="Float64"), "flag": [None, None],
                             "price": [3, 4]})
    assert not compare(nullable, expected), compare(nullable, expected).describe()
    fraction = nullable.assign(n=pd.array([2.25, None], dtype="Float64"))
    assert compare(fraction, expected).changed == {"n": ("integer", "float")}


def test_nulls_in_integer_and_boolean_columns_pass_a_frozen_schema(tmp_path: Path) -> None:
    # Given a frozen schema with integer and boolean columns, and a file where one batch has a
    # null quantity (Parquet -> float64) and the other a null flag (-> object)
    csv = "id,qty,ok\n1,5,true\n2,,false\n3,7,\n4,8,true\n"
    # When it is run
    result, state = _run(tmp_path, csv, "freeze",
                         expected={"id": "integer", "qty": "integer", "ok": "boolean"})
    # Then no batch is drift: the run completes with every row loaded
    assert result.completed
    assert [e for e in state.list_errors() if e.stage == "schema"] == []
    assert sorted(_sink(tmp_path)["id"]) == [1, 2, 3, 4]


def _run(tmp_path: Path, csv: str, policy: str, *,
         expected: dict[str, str] = EXPECTED) -> tuple[object, object]:
    (tmp_path / "rows.csv").write_text(csv)
    pipeline = Pipeline(name="drifty", source=FileSource(str(tmp_path / "rows.csv")),
                        sink=ParquetSink(str(tmp_path / "out")), key=["id"],
                        shards=RangeShards("id", 2), batch_size=2, expected_schema=expected,
                        schema_drift=policy)
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    stores = Stores(state, open_objects(f"file://{tmp_path}/objects"))
    return etl.run(pipeline, spec="x:y", stores=stores, processes=1, threads=2), state


DRIFTED = "id,name,amount,extra\n1,a,1.5,x\n2,b,2.5,y\n3,c,3.5,z\n4,d,4.5,w\n"


def _sink(tmp_path: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "out").glob("*.parquet"))],
                     ignore_index=True)


def test_evolve_loads_the_drifted_batches_as_they_are_and_reports_each_once(tmp_path: Path) -> None:
    result, state = _run(tmp_path, DRIFTED, "evolve")
    assert result.completed
    assert list(_sink(tmp_path).columns) == ["id", "name", "amount", "extra"]
    reports = [e for e in state.list_errors() if e.stage == "schema"]
    batches = sum(c.batches_fetched for c in state.list_checkpoints())
    assert batches >= 2 and len(reports) == batches  # one report per batch
    assert reports[0].error_type == "SchemaDrift" and reports[0].context["extra"] == ["extra"]
    assert reports[0].context["policy"] == "evolve"


def test_discard_drops_the_extra_columns(tmp_path: Path) -> None:
    result, state = _run(tmp_path, DRIFTED, "discard")
    assert result.completed
    sink = _sink(tmp_path)
    assert list(sink.columns) == ["id", "name", "amount"] and len(sink) == 4


def test_freeze_fails_every_drifted_batch_and_loads_nothing(tmp_path: Path) -> None:
    result, state = _run(tmp_path, DRIFTED, "freeze")
    batches = sum(c.batches_fetched for c in state.list_checkpoints())
    assert not result.completed and result.dead_letters == batches
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))
    failures = [e for e in state.list_errors() if e.stage == "clean"]
    assert failures and all("schema drift (unexpected extra); policy freeze" in e.message for e in failures)


def test_discard_cannot_fix_a_changed_type(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, "id,name,amount\n1,a,one\n2,b,two\n", "discard")
    assert not result.completed


def test_a_bad_policy_or_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="schema_drift must be one of evolve, freeze, discard"):
        Pipeline(name="p", source=None, sink=None, key=["id"], shards=RangeShards("id", 1),
                 schema_drift="tolerate")
    with pytest.raises(ConfigError, match="unknown type"):
        Pipeline(name="p", source=None, sink=None, key=["id"], shards=RangeShards("id", 1),
                 expected_schema={"id": "bigint!"})


LEARNING = '''
import os
import os
from pathlib import Path

from etl import FileSource, ParquetSink, Pipeline
from shards import RangeShards

HERE = Path(__file__).parent


def pipeline():
    return Pipeline(name="feed", source=FileSource(str(HERE / "feed.csv")),
                    sink=ParquetSink(str(HERE / "out" / "feed")), key=["id"],
                    shards=RangeShards("id", 2), batch_size=50,
                    schema_drift=os.environ.get("DRIFT_POLICY", "evolve"))
'''


def _feed(workdir: Path, *, extra: bool = False, text_amount: bool = False) -> None:
    header = "id,name,amount" + (",extra" if extra else "")
    rows = [f"{i},n{i},{'unknown' if text_amount and i == 7 else i * 1.5}" + (",x" if extra else "")
            for i in range(200)]
    (workdir / "feed.csv").write_text("\n".join([header, *rows]) + "\n")


def test_a_pipeline_without_a_schema_is_held_to_its_last_completed_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    from etl.stores.state import open_state

    def etl(*args: str, policy: str = "evolve") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
        env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]), DRIFT_POLICY=policy)
        return subprocess.run([sys.executable, "-m", "cli.main", *args, "-p", "learning:pipeline",
                               "--no-progress"], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)

    (tmp_path / "learning.py").write_text(LEARNING)
    # Given a feed loaded once as it was
    _feed(tmp_path)
    first = etl("run")
    assert first.returncode == 0 and "schema changed" not in first.stderr, first.stderr
    first_id = first.stderr.split("new run ", 1)[1].split()[0]
    # When it comes back with a new column and text in a number column
    _feed(tmp_path, extra=True, text_amount=True)
    second = etl("run")
    # Then the new run says so before it starts, loads (evolve), and reports each batch
    assert second.returncode == 0, second.stderr
    assert (f"schema changed since run {first_id}: unexpected extra; changed amount float -> "
            "string; policy evolve") in " ".join(second.stderr.split())
    state = open_state(f"sqlite:///{tmp_path}/.etl/state.db")
    reports = [e for e in state.list_errors() if e.stage == "schema"]
    assert reports and all(e.context["expected_from"] == f"run {first_id}" for e in reports)
    assert all("extra" in e.context["extra"] for e in reports)
    # When the feed keeps its new shape (other rows), now under a frozen pipeline
    _feed(tmp_path, extra=True, text_amount=True)
    (tmp_path / "feed.csv").write_text((tmp_path / "feed.csv").read_text() + "200,n200,1,x\n")
    frozen = etl("run", policy="freeze")
    # Then the run, held to the last completed run's schema (which evolved), has nothing to fail
    assert frozen.returncode == 0 and "schema changed" not in frozen.stderr, frozen.stderr
    # But a feed that drops the column again fails under freeze, and loads nothing
    _feed(tmp_path)
    failed = etl("run", policy="freeze")
    assert failed.returncode == 1 and "missing extra" in " ".join(failed.stderr.split())
    # Until the new shape is accepted
    accepted = etl("run", "--fresh", "--accept-schema", policy="freeze")
    assert accepted.returncode == 0 and "schema changed" not in accepted.stderr, accepted.stderr
    state.close()
