"""Python's cyclic garbage collector while a run starts.

Opening a run imports pandas and parses the source: about a million new objects, none of
them garbage, which set off ~130 collections on the demo (35-55 ms of the main thread,
before a single batch is worked, on the run's critical path). `paused` holds automatic
collections off for that stretch; `resume` turns them back on where the work begins (each
worker process, the in-process work, a sender following its run), and leaving `paused`
does so in any case, so a call never ends with the collector off.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

_paused = False


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside, until `resume` is called; nested or with the
    collector already off (the caller's choice), it changes nothing."""
    global _paused
    if _paused or not gc.isenabled():
        yield
        return
    gc.disable()
    _paused = True
    try:
        yield
    finally:
        resume()


def resume() -> None:
    """Collect automatically again, if `paused` turned it off (a forked process inherits
    the pause and resumes in its own right)."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()


__all__ = ["paused", "resume"]
