"""The optional packages (setup.cfg extras) and what says so when one is missing.

A feature whose package is not installed ends a command with one line naming the
`pip install 'dramatiq-etl[extra]'` that brings it (MissingExtra, exit status 2), whether
the import failed deep inside (`missing_extra`, on any error) or is found missing before a
run starts (`check_extras`, so a sink's package is not first missed by every batch).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Iterable

from etl.core.errors import MissingExtra

#: Optional packages by top-level module: the extra that installs each, and what needs it.
EXTRAS: dict[str, tuple[str, str]] = {
    "sqlalchemy": ("sql", "SqlSource and SqlSink need SQLAlchemy"),
    "psycopg": ("sql", "a postgresql:// database needs psycopg 3"),
    "pymysql": ("sql", "a mysql:// or mariadb:// database needs PyMySQL"),
    "boto3": ("s3", "s3:// paths need boto3"),
    "botocore": ("s3", "s3:// paths need boto3"),
    "pymongo": ("mongo", "mongodb:// URLs and MongoSink need pymongo"),
    "bson": ("mongo", "mongodb:// URLs and MongoSink need pymongo"),
    "deltalake": ("delta", "DeltaSink needs the deltalake package"),
}

#: Pipeline parts by class name -> the modules they import when they work.
_PART_MODULES = {
    "SqlSource": ("sqlalchemy",),
    "SqlSink": ("sqlalchemy",),
    "DeltaSink": ("deltalake",),
    "MongoSink": ("pymongo",),
}

#: URL schemes -> the modules that serve them.
_SCHEME_MODULES = {
    "s3": ("boto3",),
    "mongodb": ("pymongo",),
    "mongodb+srv": ("pymongo",),
    "postgresql": ("sqlalchemy", "psycopg"),
    "postgres": ("sqlalchemy", "psycopg"),
    "mysql": ("sqlalchemy", "pymysql"),
    "mariadb": ("sqlalchemy", "pymysql"),
}


def install_hint(module: str) -> MissingExtra:
    """The MissingExtra for optional module `module` (a key of EXTRAS)."""
    extra, need = EXTRAS[module]
    return MissingExtra(f"{need} ({module} is not installed): pip install 'dramatiq-etl[{extra}]'")


def missing_extra(exc: BaseException) -> MissingExtra | None:
    """A MissingExtra for an ImportError of an optional package (looked for in `exc` and the
    errors it was raised from or during), or None when no optional package is missing."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError):
            top = (current.name or "").partition(".")[0]
            if top in EXTRAS:
                return install_hint(top)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked or half-imported: not usable
        return False


def _url_modules(url: str) -> tuple[str, ...]:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    return _SCHEME_MODULES.get(scheme, ()) or _SCHEME_MODULES.get(scheme.split("+")[0], ())


def modules_needed(pipeline: Any, urls: Iterable[str] = ()) -> list[str]:
    """The optional modules `pipeline` (its source and sink) and the store `urls` need.
    A DeltaSink's s3:// path is deltalake's own business (it does not use boto3)."""
    needed: list[str] = []
    for part, attributes in ((pipeline.source, ("url", "path")), (pipeline.sink, ("url", "_raw_url"))):
        needed += _PART_MODULES.get(type(part).__name__, ())
        for attribute in attributes:
            value = getattr(part, attribute, None)
            if isinstance(value, str):
                needed += _url_modules(value)
    for url in urls:
        needed += _url_modules(url or "")
    return list(dict.fromkeys(needed))


def check_extras(pipeline: Any, urls: Iterable[str] = ()) -> None:
    """Raise MissingExtra for the first optional package `pipeline` or the store `urls`
    need that is not installed; before a run, so the mistake is one line, not a failure
    of every batch."""
    for module in modules_needed(pipeline, urls):
        if not _installed(module):
            raise install_hint(module)


__all__ = ["EXTRAS", "check_extras", "install_hint", "missing_extra", "modules_needed"]
