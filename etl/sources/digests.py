"""Content hashes of local files this process has read, kept while each file's stat
signature stays the same, so a long-lived process (an `etl worker`, `etl serve`) does not
read and hash a large source again for every run. The 10x demo's 310 MB took ~0.5 s to read
and hash, on the critical path of every run a worker planned or fetched.

A hash is trusted again only as git trusts its index: the signature (device, inode, size,
modification and change times in ns) must be the one seen before the bytes were read, and
the file's modification time must be at least RACY_NS older than the start of that read.
A file modified within that window is "racily clean" (a later write in the same timestamp
tick could leave its signature as it was) and is hashed anew each time. A write that puts
an old modification time back (`cp -p`, rsync) still moves the change time, which the
kernel sets. S3 objects are never cached here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

#: A file changed less than this long (ns) before its bytes were read is hashed again every
#: time: FAT keeps modification times to 2 s, most file systems to the nanosecond.
RACY_NS = 2_000_000_000


class Signature(NamedTuple):
    device: int
    inode: int
    size: int
    modified_ns: int
    changed_ns: int


class Reading(NamedTuple):
    """A local file's signature just before its bytes were read, and when that was."""

    signature: Signature
    started_ns: int


def signature(path: str) -> Signature | None:
    """The file's stat signature; None when it cannot be read (the read says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Signature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def begin_reading(path: str) -> Reading | None:
    """Call just before reading `path`'s bytes; hand the result to `DigestCache.remember`."""
    seen = signature(path)
    return Reading(seen, time.time_ns()) if seen is not None else None


class DigestCache:
    """path -> (signature, content hash), for the files this process hashed (at most `size`)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._known: OrderedDict[str, tuple[Signature, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> str | None:
        """The content hash of `path` if it was hashed here and has not changed since."""
        with self._lock:
            known = self._known.get(path)
        if known is None:
            return None
        return known[1] if signature(path) == known[0] else None

    def remember(self, path: str, reading: Reading | None, digest: str) -> None:
        """Keep `digest`, the hash of the bytes read after `reading`, if it can be trusted
        later: the file did not change while it was read, nor in the RACY_NS before."""
        if reading is None or signature(path) != reading.signature:
            return
        if reading.started_ns - reading.signature.modified_ns < RACY_NS:
            return
        with self._lock:
            self._known[path] = (reading.signature, digest)
            self._known.move_to_end(path)
            while len(self._known) > self.size:
                self._known.popitem(last=False)

    def forget(self, path: str) -> None:
        with self._lock:
            self._known.pop(path, None)


#: This process's cache (forked workers inherit what their parent hashed).
digests = DigestCache()

__all__ = ["RACY_NS", "DigestCache", "Reading", "Signature", "begin_reading", "digests", "signature"]
