"""Where a Delta table lives and how delta-rs reaches it: the path DeltaSink accepts (local,
`file://` or `s3://bucket/prefix`), the URI handed to delta-rs, the S3 storage options and
what a refused or missing S3 credential becomes.

S3 without storage_options takes the endpoint from the settings (ETL_S3_ENDPOINT_URL, with
AWS_ALLOW_HTTP for an http:// endpoint); delta-rs reads AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE... from the environment itself. Explicit
storage options are added to those and win. AWS_S3_ALLOW_UNSAFE_RENAME is deliberately
never set (see etl.sinks.delta: it would make concurrent commits to S3 unsafe).
"""

from __future__ import annotations

import os

from etl.core.errors import ConfigError
from etl.core.urls import mask_url, scheme_of
from etl.sinks.delta_arrow import one_line

_CREDENTIAL_HINTS = ("169.254.169.254", "credential", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken", "AccessDenied", "403 Forbidden")


def check_path(path: str) -> bool:
    """Whether `path` is on S3 (`s3://` or `s3a://`); ValueError when it is neither a local
    path, `file://` nor an S3 URL with a bucket."""
    scheme = scheme_of(path)
    if scheme not in ("", "file", "s3", "s3a"):
        raise ValueError(f"DeltaSink: path must be a local path, file:// or s3://bucket/prefix, "
                         f"not {mask_url(path)!r}")
    if scheme in ("s3", "s3a") and not path.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(f"DeltaSink: {path!r} names no bucket")
    return scheme in ("s3", "s3a")


def table_uri(path: str, *, s3: bool) -> str:
    """What delta-rs is given: an absolute local path, or the s3:// URL."""
    if s3:
        return path
    local = path[len("file://"):] if path.startswith("file://") else path
    return os.path.abspath(local)


def resolve_options(explicit: dict[str, str] | None, *, s3: bool) -> dict[str, str]:
    """The delta-rs storage options: for S3 the endpoint from the settings (read now, not at
    import), then the `explicit` options over them."""
    options: dict[str, str] = {}
    if s3:
        from etl.core.config import load_settings

        endpoint = load_settings().s3_endpoint_url
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
    options.update(explicit or {})
    return options


def storage_error(exc: BaseException, *, path: str, s3: bool) -> BaseException:
    """What a storage failure of the table at `path` raises: a ConfigError (permanent) when
    it says the S3 credentials are missing or refused; else `exc` itself (transient:
    retried)."""
    text = one_line(exc)
    if s3 and any(h.lower() in text.lower() for h in _CREDENTIAL_HINTS):
        error = ConfigError(
            f"DeltaSink {mask_url(path)}: no usable AWS credentials (set AWS_ACCESS_KEY_ID "
            f"and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or pass storage_options): "
            f"{mask_url(text)[:300]}")
        error.__cause__ = exc
        return error
    return exc


__all__ = ["check_path", "resolve_options", "storage_error", "table_uri"]
