"""`etl describe --check`: a pipeline checked before a run (the source gives rows, every
stage finds its columns on a sample, the key is in the cleaned output, the sink can be
reached), each check printed as ok or FAIL, one line on stderr per problem, exit status 2
when one fails. Real `etl` processes on a real project folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import free_port, sql_server_url
from tests.test_user_mistakes import etl, project

CHECKS = textwrap.dedent("""
    import os
    from etl import FileSource, ParquetSink, Pipeline, SqlSink
    from shards import HashShards
    from stages import *

    def _feed(stages=(), source="feed.csv", sink=None, key=("id",)):
        return Pipeline(name="feed", source=FileSource(source), stages=list(stages),
                        sink=sink or ParquetSink("out/feed"), key=list(key),
                        shards=HashShards(["id"], 2))

    def good():
        return _feed([Trim(columns=["name"]), ParseNumber("amount"),
                      DropRows("amount < 0", reason="negative amount")])

    def typo():
        return _feed([Trim(columns=["nmae"])])

    def renamed_key():
        return _feed([Rename({"id": "feed_id"})])

    def no_file():
        return _feed(source="missing.csv")

    def database():
        return _feed([Trim(columns=["name"])],
                     sink=SqlSink(os.environ["FEED_DB"], table="describe_check_feed"))

    def everything_wrong():
        return _feed([Upper(columns=["city"])], sink=SqlSink(os.environ["FEED_DB"], table="t"))
""")


def checked(tmp_path: Path, attr: str, env: dict[str, str | None] | None = None):  # type: ignore[no-untyped-def]
    workdir = project(tmp_path)
    (workdir / "checks.py").write_text(CHECKS)
    return etl(workdir, "describe", "--check", "-p", f"checks:{attr}", env=env)


def lines_of(text: str, prefix: str = "check ") -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_a_sound_pipeline_passes_every_check(tmp_path: Path) -> None:
    # Given a pipeline whose stages name columns the feed has, into a local folder
    # When checked
    result = checked(tmp_path, "good")
    # Then every check is ok on stdout, nothing on stderr, exit 0
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    ok = lines_of(result.stdout)
    assert [line.split(":")[0] for line in ok] == ["check source", "check stages", "check key",
                                                   "check sink"]
    assert all(": ok - " in line for line in ok), ok
    assert "3 rows read; columns: id, name, amount, day" in ok[0]
    assert "2 rows clean, 1 rejected" in ok[1]
    # And nothing was written: no dataset, no run state
    assert not (tmp_path / "out").exists() and not (tmp_path / ".etl").exists()


def test_a_stage_naming_a_column_the_source_lacks_is_one_line(tmp_path: Path) -> None:
    # Given a Trim of a misspelt column
    # When checked
    result = checked(tmp_path, "typo")
    # Then one FAIL line on stderr names the stage, the column and the columns there are
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert lines_of(result.stderr) == [
        "check stages: FAIL - stage 1 Trim(columns=['nmae']): unknown column(s) 'nmae'; "
        "columns are: id, name, amount, day"]
    # And the key, which needs the stages' output, is not checked; the sink still is
    assert "check key: skip" in result.stdout and "check sink: ok" in result.stdout


def test_a_key_a_stage_renamed_is_one_line_naming_the_stage(tmp_path: Path) -> None:
    # Given a pipeline keyed on id, which its Rename turns into feed_id
    result = checked(tmp_path, "renamed_key")
    # Then one FAIL line says the key is not in the output and which stage renamed it
    assert result.returncode == 2
    [line] = lines_of(result.stderr)
    assert line.startswith("check key: FAIL - key column 'id' is not in the cleaned output: "
                           "stage 1 Rename({'id': 'feed_id'}) renamed or dropped it")


def test_a_source_that_cannot_be_read_skips_what_needs_its_rows(tmp_path: Path) -> None:
    # Given a pipeline over a file that is not there
    result = checked(tmp_path, "no_file")
    # Then the source fails in one line, the stages and the key are skipped, exit 2
    assert result.returncode == 2
    assert lines_of(result.stderr) == [
        "check source: FAIL - csv file missing.csv: source file not found: missing.csv"]
    assert "check stages: skip" in result.stdout and "check key: skip" in result.stdout


def test_a_sink_database_that_answers_passes_and_one_that_does_not_fails(tmp_path: Path) -> None:
    # Given a SqlSink on the machine's PostgreSQL, then on a port where nothing listens
    url = sql_server_url("postgresql")
    up = checked(tmp_path, "database", env={"FEED_DB": url})
    down = checked(tmp_path, "database",
                   env={"FEED_DB": f"postgresql://etl:secret@127.0.0.1:{free_port()}/test"})
    # Then the first reaches it (and creates nothing), the second is one FAIL line
    assert up.returncode == 0, up.stderr
    assert "check sink: ok - " in up.stdout and "the database answers" in up.stdout
    assert down.returncode == 2
    [line] = lines_of(down.stderr)
    assert line.startswith("check sink: FAIL - sql table t") or \
        line.startswith("check sink: FAIL - sql table describe_check_feed")
    assert "Connection refused" in line and "secret" not in line


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    # Given a stage on a column the feed lacks and a sink nobody answers for
    result = checked(tmp_path, "everything_wrong",
                     env={"FEED_DB": f"postgresql://postgres@127.0.0.1:{free_port()}/test"})
    # Then both are reported, one line each, and nothing else is on stderr
    assert result.returncode == 2
    assert [line.split(" - ")[0] for line in result.stderr.splitlines()] == [
        "check stages: FAIL", "check sink: FAIL"]
