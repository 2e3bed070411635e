"""Any error as one line a person can read: for `etl describe --check` and for a sink that
cannot be reached before an embedded run (etl.runner), which both show failures that are not
the toolkit's own (a driver's refused login, an OS error) next to those that are.
"""

from __future__ import annotations

from etl.core.errors import USER_ERRORS
from etl.core.extras import missing_extra
from etl.core.urls import mask_url

#: Where the drivers' long texts turn into detail nobody needs on the one line.
_CUTS = (", Topology Description:", " (configured timeouts:", " (Background on this error")


def describe_error(exc: BaseException) -> str:
    """An error as one line: the toolkit's own message as it is, anything else with its
    type; a missing optional package as its `pip install` line; passwords masked."""
    extra = missing_extra(exc)
    if extra is not None and not isinstance(exc, USER_ERRORS):
        text = str(extra)
    elif isinstance(exc, USER_ERRORS):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
    for cut in _CUTS:
        text = text.split(cut)[0]
    return " ".join(mask_url(text).split())


__all__ = ["describe_error"]
