"""README.md as the tests read it: its fenced code blocks, the `etl` command lines of its
shell blocks (comments removed, an indented `[--option]` line joined to its command) and
the Python blocks that make up a file of the reader's project.

Shared by tests/test_readme_commands.py (every line parses) and tests/test_readme_run.py
(every line runs)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
#: An inline code span of the prose (fenced blocks removed first).
INLINE = re.compile(r"`([^`\n]+)`")
#: The `etl` program as a shell line calls it: `etl`, `.venv/bin/etl`, `/x/bin/etl`.
ETL_PROGRAM = re.compile(r"^(?:etl|(?:.*/)?bin/etl)$")
#: Words that stand for something the reader fills in, never a subcommand or an option.
PLACEHOLDER = re.compile(r"^(?:\.\.\.|<.*>|[A-Z][A-Z0-9_]*)$")
#: The info strings of the blocks whose lines a shell (or cron) runs.
SHELL_KINDS = {"sh", "bash", "shell", "console", "cron", ""}


@dataclass(frozen=True)
class Command:
    """One `etl` invocation found in the README: its words after `etl`, and where."""

    words: tuple[str, ...]
    where: str

    def __str__(self) -> str:
        return f"etl {' '.join(self.words)}  ({self.where})"


def blocks(kinds: set[str]) -> list[tuple[int, str]]:
    """(line number, text) of the fenced blocks whose info string is one of `kinds`."""
    return [(README.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in FENCE.finditer(README) if m.group(1) in kinds]


def strip_comment(line: str) -> str:
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


def logical_lines(block: str, first: int) -> list[tuple[int, str]]:
    """A shell block's lines with comments removed, an indented `[--option ...]` line
    joined to the command above it (the README's way of listing optional options)."""
    lines: list[tuple[int, str]] = []
    for offset, raw in enumerate(block.splitlines()):
        text = strip_comment(raw).rstrip()
        if not text.strip():
            continue
        if raw[:1].isspace() and text.strip().startswith("[") and lines:
            number, before = lines[-1]
            lines[-1] = (number, f"{before} {text.strip()}")
        else:
            lines.append((first + offset, text))
    return lines


def etl_words(segment: str) -> tuple[str, ...] | None:
    """The words after the `etl` program of one shell command, or None if it runs no `etl`."""
    try:
        words = shlex.split(segment)
    except ValueError:  # an unbalanced quote: take it word by word
        words = segment.split()
    for i, word in enumerate(words):
        if ETL_PROGRAM.match(word) and (i == 0 or words[i - 1] != "cd"):
            return tuple(words[i + 1:])
    return None


def segments(line: str) -> list[str]:
    """A shell line's commands, split at `;`, `&&`, `||` and `|` outside quotes."""
    return [part for part in re.split(r"\s*(?:;|&&|\|\||\|)\s*", line) if part.strip()]


def readme_commands(*, inline: bool = True) -> list[Command]:
    """Every `etl` command of the README's shell and cron blocks, in README order, and
    (unless `inline` is false) then those of its inline code spans."""
    found: list[Command] = []
    for first, block in blocks(SHELL_KINDS):
        for number, line in logical_lines(block, first):
            for segment in segments(line):
                words = etl_words(segment)
                if words is not None:
                    found.append(Command(words, f"README.md line {number}"))
    if inline:
        for span in INLINE.findall(FENCE.sub("", README)):
            if span.startswith("etl "):
                for segment in segments(span):
                    words = etl_words(segment)
                    if words is not None:
                        found.append(Command(words, f"inline `{span}`"))
    return found


def project_file(path: str) -> str:
    """The README's code of the reader's file `path`: its Python blocks whose first line is
    a `# path` comment (`# mypkg/pipelines.py`, `# mypkg/pipelines.py, continued: ...`),
    joined in README order."""
    head = re.compile(rf"#\s*{re.escape(path)}\b")
    parts = [code for _, code in blocks({"python", "py"}) if head.match(code)]
    return "\n".join(parts)
