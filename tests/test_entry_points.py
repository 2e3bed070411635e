"""How the toolkit is entered: the `etl` console script, `import etl`, the runner, and what
each costs in imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest

#: Client libraries no import of the toolkit's face, and no `etl --help`, may load.
HEAVY = ("pymongo", "redis", "pika", "boto3", "botocore", "sqlalchemy", "rich",
         "prometheus_client", "mongomock")
#: Loaded only where a batch is touched.
BATCH = ("pandas", "pyarrow")
ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(code: str) -> set[str]:
    """The top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = "\n".join([
        "import json, sys",
        "try:",
        textwrap.indent(code, "    "),
        "except SystemExit:",
        "    pass",
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})), file=sys.stderr)",
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("code,allowed", [
    ("import etl", ()),
    ("import results.client", ()),
    ("import stages", ()),
    ("import shards", BATCH),  # a shard plan hashes and ranges pandas columns
    ("import etl.core.config, etl.core.errors, etl.core.urls", ()),
    ("import sys; sys.argv = ['etl', '--help']\nfrom cli.main import main\nmain()", ()),
])
def test_the_face_of_each_package_loads_no_client_library(code: str, allowed: tuple[str, ...]) -> None:
    # Given a fresh interpreter
    # When it imports a package's face (or prints `etl --help`)
    loaded = _loaded_after(code)
    # Then no client library is loaded, and pandas/pyarrow only where a batch is touched
    assert loaded & set(HEAVY) == set()
    assert loaded & (set(BATCH) - set(allowed)) == set()


def test_the_help_list_matches_each_commands_own_docstring() -> None:
    # Given the lazy `etl` group and the summaries it shows without importing commands
    from cli.commands import COMMANDS
    from cli.main import cli

    ctx = click.Context(cli)
    for name, entry in COMMANDS.items():
        # When the command itself is loaded
        command = cli.get_command(ctx, name)
        # Then it is the command of that name, and the listed summary is its own
        assert command is not None and command.name == name
        assert entry.summary == command.get_short_help_str(limit=10_000)


def test_etl_run_finds_a_project_module_without_pythonpath(tmp_path: Path) -> None:
    # Given a project folder with its own package of pipelines, and no PYTHONPATH
    script = shutil.which("etl", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the etl console script is not installed in this interpreter's bin")
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (tmp_path / "rows.csv").write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(50)))
    (package / "pipelines.py").write_text(textwrap.dedent("""
        from etl import FileSource, ParquetSink, Pipeline
        from shards import RangeShards

        x = Pipeline(name="mine", source=FileSource("rows.csv"), sink=ParquetSink("out"),
                     key=["id"], shards=RangeShards("id", 2), batch_size=20)
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_") and k != "PYTHONPATH"}
    # When `etl run -p mypkg.pipelines:x` runs there
    result = subprocess.run([script, "run", "-p", "mypkg.pipelines:x", "--no-progress"],
                            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    # Then the module is found and the run completes with every row loaded
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout and "50" in result.stdout


def test_a_pipeline_runs_from_python_through_the_runner(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Given a pipeline built in Python (a notebook, a test), and settings of this folder
    import etl
    from shards import HashShards

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("ETL_")]:
        monkeypatch.delenv(name)
    (tmp_path / "rows.csv").write_text("id,v\n" + "".join(f"{i},{i * 3}\n" for i in range(300)))
    pipeline = etl.Pipeline(name="py", source=etl.FileSource("rows.csv"),
                            sink=etl.ParquetSink("out"), key=["id"],
                            shards=HashShards(["id"], 3), batch_size=50)
    # When it is run, then run again
    first = etl.run(pipeline, processes=1)
    second = etl.run(pipeline, processes=1)
    # Then the first call creates and completes the run with every row once
    assert first.opened == "new" and first.completed and not first.distributed
    assert first.rows_loaded == 300 and first.loaded_now == 300 and first.rows_quarantined == 0
    assert sorted(pipeline.sink.read_all()["id"]) == list(range(300))
    # And the second finds it complete and loads nothing more
    assert second.run_id == first.run_id and second.opened == "complete"
    assert second.completed and second.loaded_now == 0
    # And the run and its stores live in this folder's embedded defaults
    assert (tmp_path / ".etl" / "state.db").is_file()


def test_the_runner_refuses_a_distributed_run_without_an_importable_spec(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Given a broker URL in the settings and a Pipeline object with no spec
    import dataclasses

    import etl
    from etl.core.config import load_settings
    from etl.core.errors import ConfigError
    from etl.demo import pipeline as demo

    settings = dataclasses.replace(load_settings(), broker_url="redis://127.0.0.1:1/0")
    # When it is run, then it fails before any run exists, saying why
    with pytest.raises(ConfigError, match="importable spec"):
        etl.run(demo(), settings=settings)


def test_the_help_list_uses_no_deprecated_click_api(tmp_path: Path) -> None:
    # Given deprecation warnings turned into errors, as `python -m` shows them
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    # When the command list is printed through `python -m cli.main`
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-m", "cli.main",
                             "--help"], cwd=ROOT, env=env, text=True, capture_output=True,
                            timeout=120)
    # Then it prints every command's summary, shortened as click shortens them, no warning
    assert result.returncode == 0, result.stderr
    assert "DeprecationWarning" not in result.stderr
    assert "run          Run fetch -> clean -> load over every shard" in result.stdout
