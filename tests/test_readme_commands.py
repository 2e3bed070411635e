"""README.md and the `etl` command kept in step.

Every `etl ...` command line of the README's fenced code blocks (and every inline code span
that starts with `etl `) must name a real subcommand path, whose `--help` answers, and use
only options that command has: a renamed or dropped option fails here, not in a reader's
terminal. The README's Python blocks must compile, and every `make` target it names must be
in the Makefile. All in process with click's CliRunner, so the whole file takes seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.readme import (FENCE, INLINE, PLACEHOLDER, README, ROOT, Command, blocks,
                          readme_commands)

MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def _options(command: click.Command, ctx: click.Context) -> set[str]:
    """Every option name `command` takes (both names of a --x/--no-x flag, and help)."""
    names: set[str] = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _option_names(word: str) -> list[str]:
    """The option names one word uses: `--foo=1` -> --foo, `-vv` -> -v, `[--burst]` ->
    --burst; none for a value or a placeholder."""
    word = word.strip("[]")
    if not word.startswith("-") or word in ("-", "--") or re.fullmatch(r"-\d[\d.]*", word):
        return []
    if word.startswith("--"):
        return [word.split("=", 1)[0]]
    if word[1:].isalpha():  # -p, or a cluster of flags: -vv
        return [f"-{letter}" for letter in dict.fromkeys(word[1:])]
    return [word[:2]]


def resolve(words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the subcommand path the words name, the problems found): each option the line
    uses must be one of the command it follows (the root group's before a subcommand)."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="etl")
    path: list[str] = []
    problems: list[str] = []
    elided = False  # `etl dlq ... --run RUN`: an option of any of the group's commands
    for word in words:
        bare = word.strip("[]")
        if bare == "..." and isinstance(command, click.Group):
            elided = True
            continue
        if isinstance(command, click.Group) and not bare.startswith("-"):
            sub = command.get_command(ctx, bare)
            if sub is not None:
                command, path = sub, path + [bare]
                ctx = click.Context(sub, info_name=bare, parent=ctx)
                continue
            if not command.invoke_without_command and not PLACEHOLDER.match(bare):
                problems.append(f"`etl {' '.join(path)}` has no command {bare!r}")
        known = _options(command, ctx)
        if elided and isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    known |= _options(sub, click.Context(sub, info_name=name, parent=ctx))
        for name in _option_names(word):
            if name not in known:
                problems.append(f"`etl {' '.join(path)}` has no option {name}")
    if path and isinstance(command, click.Group) and not command.invoke_without_command and \
            "..." not in words:
        problems.append(f"`etl {' '.join(path)}` is a group: which of its commands?")
    return path, problems


#: Each distinct command once (the prose says `etl run` twenty times), at its first place.
COMMANDS = list({c.words: c for c in reversed(readme_commands())}.values())[::-1]


def test_the_readme_has_etl_commands_to_check() -> None:
    # Given the README, When its commands are gathered, Then the main ones are among them
    # (the extraction itself can fail: a test of nothing passes always)
    named = {" ".join(resolve(c.words)[0]) for c in COMMANDS}
    assert {"run", "worker", "dlq list", "quarantine replay", "backfill", "serve",
            "results list"} <= named, named


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_each_readme_command_parses_with_its_options(command: Command) -> None:
    # Given an `etl` command line the README shows
    # When its subcommand path is looked up and asked for --help
    path, problems = resolve(command.words)
    assert not problems, f"{command}: {'; '.join(problems)}"
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="etl",
                                 catch_exceptions=False)
    # Then the command exists, answers its help, and takes every option the README uses
    assert result.exit_code == 0, f"{command}: {result.output}"
    assert result.output.startswith(f"Usage: etl {' '.join(path)}"), result.output


def test_a_renamed_option_would_fail_the_check() -> None:
    # Given README-style lines with an option or a subcommand that does not exist
    # When they are resolved, Then each is a problem naming it
    assert resolve(("run", "--shards", "20"))[1] == []
    assert resolve(("run", "--shard-count", "20"))[1] == ["`etl run` has no option --shard-count"]
    assert resolve(("worker", "[--no-such]"))[1] == ["`etl worker` has no option --no-such"]
    assert resolve(("dlq", "lsit"))[1]
    assert resolve(("-vv", "status"))[1] == []
    assert resolve(("dlq", "...", "--run", "RUN"))[1] == []
    assert resolve(("dlq", "...", "--nope"))[1] == ["`etl dlq` has no option --nope"]


PYTHON_BLOCKS = blocks({"python", "py"})


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"line {n}" for n, _ in PYTHON_BLOCKS])
def test_each_readme_python_block_compiles(line: int, code: str) -> None:
    # Given a Python block of the README, When it is compiled, Then it is valid Python
    compile(code, f"README.md line {line}", "exec")


def _make_targets() -> set[str]:
    """The Makefile's explicit targets (`name:` rules, not `:=` assignments)."""
    return {name for names in re.findall(r"^([\w./ $()-]+?):(?!=)", MAKEFILE, re.M)
            for name in names.split()}


def test_each_make_target_the_readme_names_exists() -> None:
    # Given the `make` commands of the README's code blocks and inline code
    code = [text for _, text in blocks({"sh", "bash", "shell", "console", ""})]
    code += INLINE.findall(FENCE.sub("", README))
    # (comments included: `# or: make serve SERVE_ARGS=...`; a target is followed by the
    # end, a VAR= assignment or a closing quote, so English "make sure" is no target)
    named = {target for text in code for line in text.splitlines()
             for target in re.findall(r"(?:^|[\s;&(:])make\s+([a-z][\w-]*)"
                                      r"(?=\s*(?:#|$)|\s+[A-Z_]+=|[`\"')])", line)}
    # Then there are some, and each is a target of the Makefile
    assert {"run", "test", "bench", "serve"} <= named, named
    missing = named - _make_targets()
    assert not missing, f"README names make targets the Makefile lacks: {sorted(missing)}"


#: The README's blocks that only build things (a pipeline, a source) with no placeholder:
#: run, they check every stage, source and sink keyword the README shows, not only syntax.
BUILDING_BLOCKS = [(n, code) for n, code in PYTHON_BLOCKS
                   if re.search(r"\b(?:Pipeline|FileSource)\(", code) and "..." not in code
                   and "etl.run(" not in code]


def test_the_readmes_pipeline_and_source_examples_are_built_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the README's pipeline definition and FileSource options examples
    assert len(BUILDING_BLOCKS) >= 2, [n for n, _ in BUILDING_BLOCKS]
    monkeypatch.chdir(tmp_path)  # nothing is written, but a stray file would land here
    for line, code in BUILDING_BLOCKS:
        # When each is run as written (constructors only: nothing connects or reads)
        # Then it builds: every stage, source and sink accepts the keywords it is shown with
        exec(compile(code, f"README.md line {line}", "exec"), {"__name__": "readme_example"})
