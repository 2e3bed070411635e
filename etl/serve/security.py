"""Who may call what: the bearer token, the loopback rule and the pipeline allow-list.

* `api_token` (ETL_API_TOKEN) is asked of every call that is not a GET (or HEAD/OPTIONS);
  a server without one is read-only, and refuses to bind to anything but loopback, since
  then anybody on the network could read every run.
* Pipelines are started only from `serve_pipelines` (ETL_SERVE_PIPELINES): comma separated
  `module:attribute` specs. An HTTP caller names one of them; nothing else is imported.
"""

from __future__ import annotations

import hmac
import ipaddress
import re

from etl.core.config import Settings
from etl.core.errors import ConfigError

#: The spec an empty `serve_pipelines` and `pipeline` setting allow: the built-in demo.
DEMO_SPEC = "etl.demo:pipeline"

#: Methods that change nothing and so need no token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def allowed_pipelines(settings: Settings) -> tuple[str, ...]:
    """The `module:attribute` specs the server may start, in the order given: the
    `serve_pipelines` setting, else the `pipeline` setting, else the demo. ConfigError
    (one line, naming the setting) for an entry that is not a spec."""
    raw = settings.serve_pipelines or settings.pipeline or DEMO_SPEC
    specs = []
    for item in filter(None, (part.strip() for part in re.split(r"[,\s]+", raw))):
        spec = DEMO_SPEC if item == "demo" else item
        if not _SPEC.fullmatch(spec):
            raise ConfigError(f"ETL_SERVE_PIPELINES: {item!r} is not a module:attribute spec")
        specs.append(spec)
    return tuple(dict.fromkeys(specs))


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


def check_bind(host: str, token: str) -> None:
    """ConfigError unless `host` is loopback or a token is set."""
    if not token and not is_loopback(host):
        raise ConfigError(f"binding to {host} needs an API token: set ETL_API_TOKEN (or "
                          "api_token in etl.toml); without one etl serve binds only to "
                          "127.0.0.1")


def token_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` as a bearer token (compared in
    constant time)."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


__all__ = ["DEMO_SPEC", "SAFE_METHODS", "allowed_pipelines", "check_bind", "is_loopback",
           "token_matches"]
