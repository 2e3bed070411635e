"""URL helpers: masking secrets before anything is shown or logged."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: user:password@ up to the last "@" before the host: a password may hold "/" or an
#: unencoded "@" (AWS secret keys often contain "/").
USERINFO = re.compile(r"(?P<user>[^:/@\s]*):(?P<pw>\S*?)@(?=[^@\s/?#]+(?:[/?#\s]|$))")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)" + USERINFO.pattern)
_SECRET_QUERY = re.compile(
    r"(?P<k>(?:password|passwd|pwd|secret|token|access_key|secret_key|aws_secret_access_key|"
    r"authSource_password|sig|signature)=|AWS_SESSION_TOKEN[:=])(?P<v>[^&,\s]+)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """`url` with its password and secret query values replaced by `***`.

    Works on whole URLs and on any text that contains URLs (log lines, error messages).
    """
    if not url:
        return url
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['k']}***", text)


def scheme_of(url: str) -> str:
    """The lower-cased scheme of `url`, or "" when it has none."""
    return urlsplit(url).scheme.lower() if "://" in url or url.startswith(("sqlite:", "file:")) else ""


def strip_query(url: str) -> str:
    """`url` without its query string and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
