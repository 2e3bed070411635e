"""Backend URLs: the one parser every store and broker opener uses, and the masking of
secrets before anything is shown, logged or stored.

Every backend is named by a URL (`sqlite:///path`, `mongodb://`, `redis://`, `amqp://`,
`s3://bucket/prefix`, a plain path for local files). `parse_url` takes one apart once:
the scheme an opener dispatches on, the credentials (a password may hold "/" or "@", as AWS
secret keys do), the host part, the path and the query options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

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
    if not url or ("@" not in url and "=" not in url and ":" not in url):
        return url  # nothing to mask (the common case, cheap)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['k']}***", text)


def mask_secrets(value: Any) -> Any:
    """`value` with `mask_url` applied to every string in it: a string, or the strings
    inside lists, tuples and dict values (an error, a traceback, a task's args or result),
    as stores keep and commands print them. Anything else is returned as it is."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v) for v in value) if type(value) in (list, tuple) else value
    return value


#: A scheme followed by ":": two letters at least, so a Windows drive ("C:") is a path.
_SCHEME = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]+):")


def scheme_of(url: str) -> str:
    """The lower-cased scheme of `url`, or "" when it has none (a plain path)."""
    match = _SCHEME.match(url)
    return match["scheme"].lower() if match else ""


@dataclass(frozen=True)
class BackendURL:
    """A backend URL taken apart: `scheme://user:password@host/path?options`."""

    url: str
    scheme: str
    username: str = ""
    password: str = ""
    host: str = ""  # host[:port], or "" (`sqlite:///file.db`, a plain path)
    path: str = ""  # after the host, without its leading "/" (a db name, a bucket prefix)
    options: dict[str, str] = field(default_factory=dict)  # the query, last value wins

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def database(self) -> str:
        """The first path segment: a MongoDB database, a Redis db number."""
        return self.path.split("/", 1)[0]


#: Plain database URL schemes and the driver the toolkit speaks each through (the `sql`
#: extra installs them): SQLAlchemy alone would look for psycopg2 and MySQLdb.
SQL_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
               "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def with_sql_driver(url: str) -> str:
    """`url` naming its driver when its scheme is a plain database name (`postgresql://` ->
    `postgresql+psycopg://`); any other URL as it is."""
    scheme = scheme_of(url)
    return SQL_DRIVERS[scheme] + url[len(scheme):] if scheme in SQL_DRIVERS else url


def parse_url(url: str) -> BackendURL:
    """`url` taken apart; a plain path is a URL without scheme whose path is itself."""
    scheme = scheme_of(url)
    if not scheme:
        return BackendURL(url=url, scheme="", path=url)
    rest = url[len(scheme) + 1:]
    rest = rest[2:] if rest.startswith("//") else rest
    rest, _, query = rest.partition("?")
    rest = rest.split("#", 1)[0]
    username = password = ""
    userinfo = USERINFO.match(rest)
    if userinfo:
        username, password, rest = userinfo["user"], userinfo["pw"], rest[userinfo.end():]
    elif "@" in rest.split("/", 1)[0]:
        username, rest = rest.split("@", 1)
    host, _, path = rest.partition("/")
    return BackendURL(url=url, scheme=scheme, username=username, password=password, host=host,
                      path=path, options=dict(parse_qsl(query, keep_blank_values=True)))
