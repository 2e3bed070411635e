"""Every mistake a user can make ends the real `etl` console script with one line on stderr
and the documented exit status: 2 for a mistake in the pipeline, the command or the setup
(a stage given an argument it does not take, an optional package not installed), 3 for a
service that refuses us or does not answer (wrong credentials, connection refused).

A missing optional package is simulated honestly: the subprocess starts with a
sitecustomize that sets sys.modules[name] = None, which makes every import of it fail as an
uninstalled package's would; nothing is uninstalled.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stages
from stages import StageError
from tests.conftest import free_port, port_open, service_missing, sql_server_url

#: The project's pipelines, one factory per mistake; each reads feed.csv in the project.
PIPELINES = textwrap.dedent("""
    import os
    from etl import FileSource, ParquetSink, Pipeline
    from shards import HashShards, RangeShards
    from stages import *

    def _feed(stages=(), source="feed.csv", sink=None, key=("id",)):
        return Pipeline(name="feed", source=FileSource(source), stages=list(stages),
                        sink=sink or ParquetSink("out/feed"), key=list(key),
                        shards=HashShards(["id"], 2))

    def good():
        return _feed([Trim(columns=["name"])])

    def trim_column():
        return _feed([Trim(column=["name"])])

    def parse_date_columns():
        return _feed([ParseDate(columns=["day"])])

    def drop_rows_without_reason():
        return _feed([DropRows("amount < 0")])

    def sql_source():
        from etl import SqlSource
        return Pipeline(name="sqlfeed", key=["id"], sink=ParquetSink("out/sql"),
                        source=SqlSource(os.environ["FEED_DB"], table="mistakes_feed", key="id"),
                        shards=RangeShards("id", 2))

    def sql_sink():
        from etl import SqlSink
        return _feed(sink=SqlSink(os.environ.get("FEED_DB", "sqlite:///out/feed.db"),
                                  table="mistakes_feed"))

    def mongo_sink():
        from etl import MongoSink
        return _feed(sink=MongoSink("mongodb://127.0.0.1:27017/mistakes", collection="feed"))

    def delta_sink():
        from etl import DeltaSink
        return _feed(sink=DeltaSink("out/delta"))

    def s3_source():
        return _feed(source="s3://mistakes-bucket/feed.csv")
""")

#: A module that builds its pipeline at import, with a stage given a wrong keyword.
MODULE_LEVEL = textwrap.dedent("""
    from etl import FileSource, ParquetSink, Pipeline
    from shards import HashShards
    from stages import Trim

    feed = Pipeline(name="feed", source=FileSource("feed.csv"), key=["id"],
                    stages=[Trim(column=["name"])],
                    sink=ParquetSink("out/feed"), shards=HashShards(["id"], 2))
""")

#: Makes the modules named in BLOCK_IMPORTS unimportable in the process it starts in.
BLOCKER = textwrap.dedent("""
    import os, sys
    for name in filter(None, os.environ.get("BLOCK_IMPORTS", "").split(",")):
        sys.modules[name] = None
""")

#: No AWS credentials anywhere (and no instance metadata service to ask); None unsets.
NO_AWS: dict[str, str | None] = {
    "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None, "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}


def project(tmp_path: Path) -> Path:
    """A user's project folder: a CSV feed and a module of pipelines."""
    (tmp_path / "feed.csv").write_text("id,name,amount,day\n1, a ,2.5,2026-01-02\n"
                                       "2,b,3.5,2026-01-03\n3,c,-1,2026-01-04\n")
    (tmp_path / "mypipes.py").write_text(PIPELINES)
    (tmp_path / "eager.py").write_text(MODULE_LEVEL)
    return tmp_path


def etl_script() -> list[str]:
    """The installed `etl` console script, else the module it runs."""
    script = Path(sys.executable).parent / "etl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def etl(workdir: Path, *args: str, env: dict[str, str | None] | None = None,
        block: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`etl ARGS` run in `workdir` as a user runs it: none of our ETL_ settings, the
    project importable from the current directory only, plus `env` (None unsets); `block`
    makes those optional packages look uninstalled."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("ETL_", "PYTHONPATH"))}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    if block:
        blocker = workdir / "_blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(BLOCKER)
        full["PYTHONPATH"] = str(blocker)
        full["BLOCK_IMPORTS"] = ",".join(block)
    return subprocess.run([*etl_script(), *args], cwd=workdir, env=full, text=True,
                          capture_output=True, timeout=120)


def one_line(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """Assert `result` exited with `status` and said exactly one line on stderr, without a
    traceback, holding every fragment; return that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- stages built with arguments they do not take ------------------------------------------

def _stage_classes() -> list[type]:
    return [value for name in stages.__all__
            if inspect.isclass(value := getattr(stages, name))
            and hasattr(value, "apply") and name != "Stage"]


@pytest.mark.parametrize("cls", _stage_classes(), ids=lambda cls: cls.__name__)
def test_every_stage_names_itself_and_its_arguments_for_an_unknown_one(cls: type) -> None:
    # Given any stage class of the library
    # When it is built with an argument it does not take
    with pytest.raises(StageError) as caught:
        cls(no_such_option=1)
    # Then the StageError names the stage, the argument, and what the stage takes
    message = str(caught.value)
    assert message.startswith(f"{cls.__name__}: unknown argument 'no_such_option'; "
                              f"{cls.__name__} takes "), message
    assert "\n" not in message


def test_a_stage_error_points_to_the_close_argument_and_the_call_it_takes() -> None:
    # Given the two spellings users mix up: Trim takes columns, ParseDate takes column
    # When each is given the other's
    with pytest.raises(StageError) as trim:
        stages.Trim(column=["name"])
    with pytest.raises(StageError) as parse:
        stages.ParseDate(columns=["day"])
    # Then each says which one it takes and shows its call
    assert str(trim.value) == ("Trim: unknown argument 'column' (did you mean 'columns'?); "
                               "Trim takes columns=[...]")
    assert str(parse.value).startswith("ParseDate: unknown argument 'columns' (did you mean "
                                       "'column'?); ParseDate takes column='...', *, "
                                       "format='%Y-%m-%d'")
    # And a missing, an extra positional and a wrongly typed argument say so too
    with pytest.raises(StageError, match=r"^DropRows: missing argument 'reason'; DropRows "
                                         r"takes where='\.\.\.', \*, reason='\.\.\.'$"):
        stages.DropRows("amount < 0")
    with pytest.raises(StageError, match="^Trim: too many positional arguments; Trim takes"):
        stages.Trim(["a"], ["b"])
    with pytest.raises(StageError, match="^Trim: 'int' object is not iterable; Trim takes"):
        stages.Trim(5)


def test_a_stage_built_right_still_copies_pickles_and_replaces() -> None:
    # Given a dataclass stage and a hand-written one, built right
    import copy
    import dataclasses
    import pickle

    parse, trim = stages.ParseDate("day", format="%d/%m/%Y"), stages.Trim(["name"])
    # When copied, pickled and replaced (unpickling does not call the class)
    # Then they come back equal in what they print
    assert repr(pickle.loads(pickle.dumps(parse))) == repr(parse)
    assert repr(copy.deepcopy(trim)) == "Trim(columns=['name'])"
    assert repr(dataclasses.replace(parse, tz="Europe/Paris")) == \
        "ParseDate('day', format='%d/%m/%Y', tz='Europe/Paris')"


@pytest.mark.parametrize("attr,fragments", [
    ("trim_column", ["mypipes:trim_column", "mypipes.py, line",
                     "Trim: unknown argument 'column' (did you mean 'columns'?)",
                     "Trim takes columns=[...]"]),
    ("parse_date_columns", ["mypipes:parse_date_columns",
                            "ParseDate: unknown argument 'columns' (did you mean 'column'?)"]),
    ("drop_rows_without_reason", ["mypipes:drop_rows_without_reason",
                                  "DropRows: missing argument 'reason'"]),
])
def test_a_stage_with_a_wrong_argument_is_one_line_exit_2(tmp_path: Path, attr: str,
                                                          fragments: list[str]) -> None:
    # Given a pipeline factory building a stage with an argument it does not take
    workdir = project(tmp_path)
    # When it is run and described, Then each is one line naming the spec and the stage, exit 2
    for args in (["run", "--no-progress"], ["describe"]):
        one_line(etl(workdir, *args, "-p", f"mypipes:{attr}"), 2, *fragments)
    assert not (workdir / "out").exists()


def test_a_module_that_fails_while_importing_names_the_spec(tmp_path: Path) -> None:
    # Given a module that builds its pipeline at import, with Trim(column=...)
    workdir = project(tmp_path)
    # When run, Then one line names the spec, the file and line, and what Trim takes
    one_line(etl(workdir, "run", "--no-progress", "-p", "eager:feed"), 2,
             "eager:feed (", "eager.py, line 7)", "Trim takes columns=[...]")


# -- optional packages not installed -------------------------------------------------------

@pytest.mark.parametrize("attr,blocked,extra,env", [
    ("sql_source", "sqlalchemy", "sql", {"FEED_DB": "postgresql://postgres@127.0.0.1:5432/test"}),
    ("sql_source", "psycopg", "sql", {"FEED_DB": "postgresql://postgres@127.0.0.1:5432/test"}),
    ("sql_sink", "sqlalchemy", "sql", {}),
    ("s3_source", "boto3", "s3", NO_AWS),
    ("mongo_sink", "pymongo", "mongo", {}),
    ("delta_sink", "deltalake", "delta", {}),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_missing_optional_package_says_which_extra_to_install(
        tmp_path: Path, attr: str, blocked: str, extra: str, env: dict[str, str | None]) -> None:
    # Given a pipeline whose source or sink needs an optional package that is not installed
    workdir = project(tmp_path)
    # When it is run (before anything is read or written)
    result = etl(workdir, "run", "--no-progress", "-p", f"mypipes:{attr}", env=env,
                 block=(blocked,))
    # Then one line names the package and the pip install that brings it, exit 2
    one_line(result, 2, f"mypipes:{attr}", f"{blocked} is not installed",
             f"pip install 'dramatiq-etl[{extra}]'")
    assert not (workdir / ".etl").exists() and not (workdir / "out").exists()


@pytest.mark.parametrize("setting,url,blocked,extra,args", [
    ("ETL_STATE_URL", "mongodb://127.0.0.1:27017/mistakes", "pymongo", "mongo", ["status"]),
    ("ETL_RESULTS_URL", "mongodb://127.0.0.1:27017/mistakes", "pymongo", "mongo",
     ["results", "list"]),
    ("ETL_OBJECTS_URL", "s3://mistakes-bucket/etl", "boto3", "s3",
     ["quarantine", "list", "no-such-run"]),
], ids=["state-mongodb", "results-mongodb", "objects-s3"])
def test_a_store_url_whose_package_is_missing_is_one_line(
        tmp_path: Path, setting: str, url: str, blocked: str, extra: str,
        args: list[str]) -> None:
    # Given a store URL whose client package is not installed
    workdir = project(tmp_path)
    # When a command opens that store
    result = etl(workdir, *args, env={setting: url, **NO_AWS}, block=(blocked,))
    # Then one line says which extra to install, exit 2
    one_line(result, 2, f"{blocked} is not installed", f"pip install 'dramatiq-etl[{extra}]'")


# -- credentials and unreachable services: exit 3 ------------------------------------------

def test_s3_without_credentials_is_one_line_exit_3(tmp_path: Path) -> None:
    # Given a pipeline reading s3:// and no AWS credentials anywhere
    workdir = project(tmp_path)
    # When it is run, Then one line says which settings give credentials, exit 3
    one_line(etl(workdir, "run", "--no-progress", "-p", "mypipes:s3_source", env=NO_AWS), 3,
             "Unable to locate credentials", "AWS_ACCESS_KEY_ID")


def test_a_database_that_refuses_the_login_is_one_line_exit_3(tmp_path: Path) -> None:
    # Given a SqlSource whose URL has a wrong password (MariaDB checks it; the machine's
    # PostgreSQL trusts every password, so there a role that does not exist stands in)
    mariadb = sql_server_url("mariadb").replace("root@", "root:wrong-password@")
    postgres = sql_server_url("postgresql").replace("postgres@", "nosuchrole:pw@")
    workdir = project(tmp_path)
    for url, said in ((mariadb, "Access denied"), (postgres, 'role "nosuchrole" does not exist')):
        # When it is run
        result = etl(workdir, "run", "--no-progress", "-p", "mypipes:sql_source",
                     env={"FEED_DB": url})
        # Then one line names the source (password masked) and the refusal, exit 3
        line = one_line(result, 3, "cannot connect", said)
        assert "wrong-password" not in line and ":***@" in line


def test_a_database_that_refuses_the_connection_is_one_line_exit_3(tmp_path: Path) -> None:
    # Given a SqlSource on a port where nothing listens
    workdir = project(tmp_path)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    # When it is run, Then one line (the driver's two-line text folded), exit 3
    one_line(etl(workdir, "run", "--no-progress", "-p", "mypipes:sql_source",
                 env={"FEED_DB": url}), 3, "cannot connect", "Connection refused")


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:{port}/%2F",
                                 "redis://127.0.0.1:{port}/0"], ids=["rabbitmq", "redis"])
def test_a_broker_that_refuses_the_connection_is_one_line_exit_3(tmp_path: Path,
                                                                  url: str) -> None:
    # Given a broker URL where nothing listens
    workdir = project(tmp_path)
    env = {"ETL_BROKER_URL": url.format(port=free_port())}
    # When the queues are looked at or a worker starts
    for args in (["queues"], ["worker"]):
        # Then one line says the service did not answer, exit 3
        one_line(etl(workdir, *args, env=env), 3, "did not answer")


def test_a_broker_that_refuses_the_login_is_one_line_exit_3(tmp_path: Path) -> None:
    # Given RabbitMQ with a wrong password
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ on 127.0.0.1:5672", "port does not answer")
    workdir = project(tmp_path)
    env = {"ETL_BROKER_URL": "amqp://guest:wrong-password@127.0.0.1:5672/%2F"}
    # When the queues are looked at, Then one line says the login was refused, exit 3
    line = one_line(etl(workdir, "queues", env=env), 3, "refused the login", "ACCESS_REFUSED")
    assert "wrong-password" not in line


@pytest.mark.parametrize("setting,url,args", [
    ("ETL_STATE_URL", "mongodb://127.0.0.1:{port}/x", ["status"]),
    ("ETL_RESULTS_URL", "redis://127.0.0.1:{port}/0", ["results", "list"]),
], ids=["state-mongodb", "results-redis"])
def test_a_store_that_refuses_the_connection_is_one_line_exit_3(
        tmp_path: Path, setting: str, url: str, args: list[str]) -> None:
    # Given a store URL where nothing listens
    workdir = project(tmp_path)
    # When a command reads it, Then one line (without pymongo's topology dump), exit 3
    line = one_line(etl(workdir, *args, env={setting: url.format(port=free_port())}), 3,
                    "did not answer", "Connection refused")
    assert "Topology" not in line


def test_a_run_whose_broker_refuses_ends_with_one_error_line_exit_3(tmp_path: Path) -> None:
    # Given a run sent to a RabbitMQ where nothing listens
    workdir = project(tmp_path)
    env = {"ETL_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"}
    # When it is run
    result = etl(workdir, "run", "--no-progress", "-p", "mypipes:good", env=env)
    # Then it ends with exit 3 and one error line, no traceback (the run's opening lines
    # come before it: the run was created before the broker was asked)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not answer" in errors[0]
