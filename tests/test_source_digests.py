"""A long-lived process keeps the content hash of a local source file while the file's stat
signature stays the same (etl.sources.digests), and hashes it anew whenever that cannot be
trusted: changed since, changed while read, or changed too recently ("racily clean")."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from etl.core.errors import SourceError
from etl.sources import digests as digest_module
from etl.sources.files import FileSource


def _csv(path: Path, rows: int = 50, *, age_s: float = 60.0) -> Path:
    """A CSV of its own content, last modified `age_s` seconds ago."""
    tag = uuid.uuid4().hex
    path.write_text("id,v\n" + "".join(f"{i},{tag}-{i}\n" for i in range(rows)))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose bytes are read from now on."""
    seen: list[str] = []
    read_bytes = Path.read_bytes

    def recorded(self: Path) -> bytes:
        seen.append(str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", recorded)
    return seen


def test_an_unchanged_file_is_not_read_again_for_its_fingerprint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a file one source has hashed and parsed (last changed a minute ago)
    path = _csv(tmp_path / "rows.csv")
    seen = FileSource(str(path))
    first = seen.fingerprint()
    seen.table()
    reads = _reads(monkeypatch)
    # When another source over the same file (a worker's next run) asks for its fingerprint
    again = FileSource(str(path))
    # Then it is the same, given without reading the file
    assert again.fingerprint() == first
    assert reads == []
    # And its rows, parsed once in this process, come without a read either
    assert again.table().num_rows == 50 and reads == []
    # While a source not parsed here yet reads (and checks) the bytes when it must parse
    other = _csv(tmp_path / "other.csv")
    FileSource(str(other)).fingerprint()
    assert reads == [str(other)]  # hashed
    assert FileSource(str(other)).table().num_rows == 50 and reads == [str(other)] * 2


def test_a_changed_file_is_hashed_again_even_with_its_old_size_and_time(tmp_path: Path) -> None:
    # Given a hashed file
    path = _csv(tmp_path / "rows.csv")
    before = FileSource(str(path)).fingerprint()
    stamp = path.stat()
    # When it is rewritten with other bytes of the same size, its modification time put back
    path.write_text(path.read_text().replace("1", "2"))
    assert path.stat().st_size == stamp.st_size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    # Then its fingerprint is that of the new bytes (the change time moved: it is read again)
    after = FileSource(str(path)).fingerprint()
    assert after != before
    assert FileSource(str(path)).table().column("v").to_pylist()[2].endswith("-2")


def test_a_file_changed_moments_before_its_read_is_hashed_every_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a file written just now (a later write in the same timestamp tick could hide)
    path = _csv(tmp_path / "fresh.csv", age_s=0)
    FileSource(str(path)).fingerprint()
    reads = _reads(monkeypatch)
    # When it is fingerprinted again, Then its bytes are read and hashed again
    FileSource(str(path)).fingerprint()
    assert reads == [str(path)]


def test_bytes_that_do_not_match_a_kept_hash_are_refused_not_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a file whose kept hash no longer matches its bytes (changed unseen), not parsed yet
    path = _csv(tmp_path / "rows.csv")
    monkeypatch.setattr(digest_module.digests, "get", lambda p: "0" * 64)
    source = FileSource(str(path))
    assert source.fingerprint() == "0" * 64
    # When its rows are asked for, Then the read is refused with the file named, never parsed
    # under the kept hash
    with pytest.raises(SourceError, match="changed while it was read"):
        source.table()
