"""Object store: open one by URL (`file://path`, a plain path, or `s3://bucket/prefix`)."""

from __future__ import annotations

from etl.core.errors import UnsupportedURL
from etl.core.urls import scheme_of
from etl.stores.objects.base import ObjectInfo, ObjectStore


def open_objects(url: str, **options: object) -> ObjectStore:
    """The object store for `url`. `s3://` accepts `endpoint_url=` (MinIO, moto, ...), by
    default the `s3_endpoint_url` setting (ETL_S3_ENDPOINT_URL)."""
    scheme = scheme_of(url)
    if scheme in ("", "file"):
        from etl.stores.objects.local import LocalObjectStore

        return LocalObjectStore(url)
    if scheme == "s3":
        from etl.stores.objects.s3 import S3ObjectStore

        return S3ObjectStore(url, **options)  # type: ignore[arg-type]
    raise UnsupportedURL(
        f"unsupported object store URL scheme {scheme!r}; use one of: "
        "file://path (or a plain path), s3://bucket/prefix"
    )


__all__ = ["ObjectInfo", "ObjectStore", "open_objects"]
