"""Folders of the bench's timed commands: a fresh one per command, all deleted when the
bench ends rather than each one as its command ends.

Why: on an ext4 file system without a journal (this machine's root, /dev/vda), the kernel,
allocating an inode, passes over inodes freed in the last 30 s or so (ext4's
`recently_deleted`: the writeback interval, `vm.dirty_expire_centisecs`), reading inode
table blocks to find them. A command started just after the previous command's folder was
deleted then pays for that deletion in every file it creates: in three successive profile
passes of 180 batches, each started after the previous one's folder was deleted, a file
write cost 0.71, 0.99 and 1.52 ms of CPU (0.31 ms each on tmpfs). A user's run does not
follow the deletion of thousands of files; the bench's runs all did, and the many-file
contender (one part file and one quarantine file per batch) paid the most.

Where free space is short (under `keep_free` bytes), folders are deleted as their command
ends, as before, and the bench says so once.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: Below this much free space in the temporary folder, folders are deleted as they are done.
KEEP_FREE_BYTES = 20 * 2**30


class Scratch:
    """Hands out fresh folders under the temporary folder; `close` deletes them all."""

    def __init__(self, *, keep_free: int = KEEP_FREE_BYTES) -> None:
        self.keep_free = keep_free
        self._kept: list[Path] = []
        self._warned = False

    @contextmanager
    def folder(self) -> Iterator[Path]:
        """A fresh empty folder for one command; kept until `close` while space allows."""
        path = Path(tempfile.mkdtemp(prefix="etl-bench-"))
        try:
            yield path
        finally:
            if shutil.disk_usage(path).free >= self.keep_free:
                self._kept.append(path)
            else:
                if not self._warned:
                    self._warned = True
                    print(f"  (less than {self.keep_free / 2**30:.0f} GiB free: run folders are "
                          "deleted as they are done, and file creation may cost more)", flush=True)
                shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Delete every folder kept so far."""
        for path in self._kept:
            shutil.rmtree(path, ignore_errors=True)
        self._kept.clear()


#: The bench's folders (bench_all closes it when it ends).
SCRATCH = Scratch()
