"""Probes of a sink's destination that write nothing, shared by the sinks that are
`Reachable` (etl.sinks.base): a local folder or SQLite file can be written, an S3 bucket
answers.

Each returns a short detail of what answered, or raises: StoreUnwritable for a folder the
machine refuses, the client's own error for a bucket (a refused credential, no endpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from etl.core.errors import StoreUnwritable

#: Seconds a probe waits for a service to answer: a host that drops packets says so soon.
PROBE_TIMEOUT_S = 10


def writable_folder(path: Path) -> str:
    """The folder `path`, or its nearest existing parent (the sink makes the rest), can be
    written by this process: checked with access(2), nothing is created."""
    wanted = path.absolute()
    existing = wanted
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StoreUnwritable(f"cannot write in {wanted}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreUnwritable(f"cannot write in {existing}: {_refusal(existing)}")
    return "the folder is writable" if existing == wanted else \
        f"the folder can be made ({existing} is writable)"


def writable_file(path: Path) -> str:
    """The file `path` (a SQLite database) can be written, or made in its folder, which must
    exist (SQLite does not make folders) and be writable (its journal goes there too)."""
    wanted = path.absolute()
    if not wanted.parent.is_dir():
        raise StoreUnwritable(f"cannot write {wanted}: the folder {wanted.parent} does not exist")
    if wanted.exists() and not wanted.is_file():
        raise StoreUnwritable(f"cannot write {wanted}: it is not a file")
    if wanted.exists() and not os.access(wanted, os.R_OK | os.W_OK):
        raise StoreUnwritable(f"cannot write {wanted}: {_refusal(wanted.parent)}")
    writable_folder(wanted.parent)
    return "the database file can be written" if wanted.exists() else \
        "the database file can be made"


def _refusal(folder: Path) -> str:
    """Why a folder access(2) refused cannot be written (root is refused only there)."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def bucket_answers(path: str, options: Mapping[str, str]) -> str:
    """The S3 bucket of `path` answers a HEAD with the credentials and endpoint delta-rs
    would use (its storage `options`, else the environment, as delta-rs reads them)."""
    import boto3
    from botocore.config import Config

    upper = {key.upper(): value for key, value in options.items()}
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    client = boto3.client(
        "s3", endpoint_url=upper.get("AWS_ENDPOINT_URL") or upper.get("AWS_ENDPOINT") or None,
        aws_access_key_id=upper.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=upper.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=upper.get("AWS_SESSION_TOKEN"),
        region_name=upper.get("AWS_REGION") or upper.get("AWS_DEFAULT_REGION"),
        config=Config(connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S,
                      retries={"max_attempts": 1}))
    client.head_bucket(Bucket=bucket)
    return f"bucket {bucket} answers"


__all__ = ["PROBE_TIMEOUT_S", "bucket_answers", "writable_file", "writable_folder"]
