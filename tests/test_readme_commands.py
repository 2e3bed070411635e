"""README.md and the `etl` command kept in step.

Every `etl ...` command line of the README's fenced code blocks (and every inline code span
that starts with `etl `) must name a real subcommand path, whose `--help` answers, and use
only options that command has: a renamed or dropped option fails here, not in a reader's
terminal. The README's Python blocks must compile, and every `make` target it names must be
in the Makefile. All in process with click's CliRunner, so the whole file takes seconds.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
#: An inline code span of the prose (fenced blocks removed first).
INLINE = re.compile(r"`([^`\n]+)`")
#: The `etl` program as a shell line calls it: `etl`, `.venv/bin/etl`, `/x/bin/etl`.
ETL_PROGRAM = re.compile(r"^(?:etl|(?:.*/)?bin/etl)$")
#: Words that stand for something the reader fills in, never a subcommand or an option.
PLACEHOLDER = re.compile(r"^(?:\.\.\.|<.*>|[A-Z][A-Z0-9_]*)$")


@dataclass(frozen=True)
class Command:
    """One `etl` invocation found in the README: its words after `etl`, and where."""

    words: tuple[str, ...]
    where: str

    def __str__(self) -> str:
        return f"etl {' '.join(self.words)}  ({self.where})"


def _blocks(kinds: set[str]) -> list[tuple[int, str]]:
    """(line number, text) of the fenced blocks whose info string is one of `kinds`."""
    return [(README.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in FENCE.finditer(README) if m.group(1) in kinds]


def _strip_comment(line: str) -> str:
    """The line without its shell comment (a `#` at the start or after a blank, outside
    quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _logical_lines(block: str, first: int) -> list[tuple[int, str]]:
    """A shell block's lines with comments removed, an indented `[--option ...]` line
    joined to the command above it (the README's way of listing optional options)."""
    lines: list[tuple[int, str]] = []
    for offset, raw in enumerate(block.splitlines()):
        text = _strip_comment(raw).rstrip()
        if not text.strip():
            continue
        if raw[:1].isspace() and text.strip().startswith("[") and lines:
            number, before = lines[-1]
            lines[-1] = (number, f"{before} {text.strip()}")
        else:
            lines.append((first + offset, text))
    return lines


def _etl_words(segment: str) -> tuple[str, ...] | None:
    """The words after the `etl` program of one shell command, or None if it runs no `etl`."""
    try:
        words = shlex.split(segment)
    except ValueError:  # an unbalanced quote: take it word by word
        words = segment.split()
    for i, word in enumerate(words):
        if ETL_PROGRAM.match(word) and (i == 0 or words[i - 1] != "cd"):
            return tuple(words[i + 1:])
    return None


def _segments(line: str) -> list[str]:
    """A shell line's commands, split at `;`, `&&`, `||` and `|` outside quotes."""
    return [part for part in re.split(r"\s*(?:;|&&|\|\||\|)\s*", line) if part.strip()]


def readme_commands() -> list[Command]:
    """Every `etl` command of the README's shell and cron blocks and inline code spans."""
    found: list[Command] = []
    for first, block in _blocks({"sh", "bash", "shell", "console", "cron", ""}):
        for number, line in _logical_lines(block, first):
            for segment in _segments(line):
                words = _etl_words(segment)
                if words is not None:
                    found.append(Command(words, f"README.md line {number}"))
    prose = FENCE.sub("", README)
    for span in INLINE.findall(prose):
        if span.startswith("etl "):
            for segment in _segments(span):
                words = _etl_words(segment)
                if words is not None:
                    found.append(Command(words, f"inline `{span}`"))
    return found


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


PYTHON_BLOCKS = _blocks({"python", "py"})


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
    code = [text for _, text in _blocks({"sh", "bash", "shell", "console", ""})]
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
