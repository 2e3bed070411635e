"""Atomic file writes (etl.core.files): the whole file or the old one, never half; the mode
a plain open() gives; no temporary file left behind by a failed write."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from etl.core.files import TEMP_PREFIX, atomic_write, orphaned


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    # Given a file written once
    target = tmp_path / "deep" / "folder" / "part.parquet"
    atomic_write(target, b"old")
    # When it is written again with more bytes
    atomic_write(target, b"new" * 100_000)
    # Then it holds the new bytes only, and its folder holds nothing else
    assert target.read_bytes() == b"new" * 100_000
    assert [p.name for p in target.parent.iterdir()] == ["part.parquet"]


def test_a_folder_removed_after_a_write_is_made_again(tmp_path: Path) -> None:
    # Given a folder written into once (known to exist from then on), then removed
    folder = tmp_path / "objects" / "shard=00001"
    atomic_write(folder / "a.parquet", b"a")
    shutil.rmtree(tmp_path / "objects")
    # When another file is written into it
    atomic_write(folder / "b.parquet", b"b")
    # Then the folder is made again and holds the file
    assert (folder / "b.parquet").read_bytes() == b"b"


def test_a_file_gets_the_mode_open_gives_under_the_umask(tmp_path: Path) -> None:
    # Given a process with umask 027
    code = ("import os, sys; from pathlib import Path; os.umask(0o027); "
            "from etl.core.files import atomic_write; atomic_write(Path(sys.argv[1]), b'x')")
    target = tmp_path / "f.bin"
    # When it writes a file
    subprocess.run([sys.executable, "-c", code, str(target)], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    # Then the file's mode is 0666 less the umask, as open() would make it
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a disk that refuses the sync
    def refuse(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    target = tmp_path / "part.parquet"
    # When a file is written
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"data")
    # Then neither the file nor a temporary one is there
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_names_its_host_and_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a write that stops after its temporary file is made (the process killed, say)
    seen: list[str] = []

    def stop(fd: int) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", stop)
    # When it is made
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "part.parquet", b"data")
    # Then its name starts with the prefix listings skip, and names this live process
    assert len(seen) == 1 and seen[0].startswith(TEMP_PREFIX)
    assert not orphaned(tmp_path / seen[0])  # its writer (this process) still runs
