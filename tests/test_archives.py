"""Compressed sources unpacked by etl.sources.archives: the fast inflate gives the bytes the
standard library gives, and every broken archive is judged and named as gzip and zipfile
judge it."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest

from etl.core.errors import SourceError
from etl.sources import archives
from etl.sources.archives import decompress

CSV = b"".join(b"%d,sku-%d,%d.5\n" % (n, n % 97, n) for n in range(50_000))


def _zip(content: bytes, *, compression: int = zipfile.ZIP_DEFLATED, prefix: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    buffer.write(prefix)
    with zipfile.ZipFile(buffer, "a" if prefix else "w", compression=compression) as archive:
        archive.writestr("orders.csv", content)
    return buffer.getvalue()


def _standard(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(archive.namelist()[0])


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED,
                                         zipfile.ZIP_BZIP2], ids=["deflated", "stored", "bzip2"])
def test_a_zip_member_comes_out_as_zipfile_reads_it(compression: int) -> None:
    # Given a one-file zip, deflated (the fast path) or otherwise (zipfile's)
    data = _zip(CSV, compression=compression)
    # When it is unpacked, Then its bytes are the file's, as zipfile reads them
    assert decompress("orders.csv.zip", data) == CSV == _standard(data)


def test_a_deflated_member_is_inflated_by_isal_when_installed() -> None:
    # Given ISA-L installed (a dependency) and a deflated member
    pytest.importorskip("isal", reason="the fast inflate needs the isal package")
    data = _zip(CSV)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = archive.infolist()[0]
    # When the fast path reads it, Then it gives the whole file (size and CRC checked)
    assert archives._inflated(data, member) == CSV


def test_a_zip_after_a_prefix_is_read_where_its_member_starts() -> None:
    # Given a zip appended to other bytes (a self-extracting archive's layout)
    data = _zip(CSV, prefix=b"#!/bin/sh\necho not a csv\n" * 10)
    # When it is unpacked, Then the member is found at its real offset
    assert decompress("orders.csv.zip", data) == CSV


def test_a_member_whose_bytes_do_not_match_its_crc_is_a_corrupt_zip() -> None:
    # Given a deflated member with one byte of its compressed data changed
    data = bytearray(_zip(CSV))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        member = archive.infolist()[0]
    middle = member.header_offset + 30 + len(member.filename) + member.compress_size // 2
    data[middle] ^= 0xFF
    # When it is unpacked, Then it is refused, naming the file, as zipfile would refuse it
    with pytest.raises(SourceError, match=r"orders\.csv\.zip.*(corrupt zip|cannot unpack)"):
        decompress("orders.csv.zip", bytes(data))


def test_a_gzip_comes_out_as_gzip_reads_it_and_broken_ones_are_named() -> None:
    # Given a good gzip file, one cut short, and one with bytes after its end
    good = gzip.compress(CSV)
    # Then the good one is the file, and the others are refused as gzip would refuse them
    assert decompress("orders.csv.gz", good) == CSV
    with pytest.raises(SourceError, match="orders.csv.gz.*truncated"):
        decompress("orders.csv.gz", good[:len(good) // 2])
    with pytest.raises(SourceError, match="orders.csv.gz.*not a gzip file"):
        decompress("orders.csv.gz", good + b"not gzip at all")
    # And two gzip members one after the other are one file, as gzip reads them
    assert decompress("orders.csv.gz", good + gzip.compress(b"tail\n")) == CSV + b"tail\n"
