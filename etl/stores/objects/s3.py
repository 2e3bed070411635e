"""S3 object store (boto3), for production: `s3://bucket/prefix`.

S3 puts are atomic, so no temporary objects are needed. The endpoint can be overridden for
MinIO, Ceph, moto and others (argument, else the `s3_endpoint_url` setting,
ETL_S3_ENDPOINT_URL; etl.core.config); region and credentials come from the usual AWS chain
(environment, config files, instance roles), never from the URL, and the URL kept for
messages and logs is rebuilt from bucket and prefix only, so a secret someone put in it is
never shown. Transient errors (throttling, 5xx, connection resets) are
retried by botocore's "standard" retry mode.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterator

from etl.core.config import load_settings
from etl.core.errors import ObjectNotFound
from etl.stores.objects.base import ObjectInfo
from etl.stores.objects.local import check_key, check_prefix
from etl.core.urls import mask_url, parse_url

log = logging.getLogger(__name__)

#: Error codes meaning "no such object" (get_object says NoSuchKey, head_object a bare 404).
_MISSING = ("NoSuchKey", "404", "NotFound")


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3ObjectStore:
    """Objects under `prefix` in one bucket; keys are relative to the prefix."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, client: Any = None) -> None:
        parts = parse_url(url)  # credentials do not belong in an S3 URL: they are dropped
        if parts.scheme != "s3":
            raise ValueError(f"S3 URL must look like s3://bucket/prefix, got {mask_url(url)!r}")
        bucket, prefix = parts.host, parts.path
        if not bucket:
            raise ValueError(f"S3 URL names no bucket: {mask_url(url)!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or load_settings().s3_endpoint_url or None
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", endpoint_url=self.endpoint_url,
                                  config=Config(retries={"max_attempts": 5, "mode": "standard"}))
        self.client = client
        log.debug("S3 object store %s (endpoint %s)", self.url, mask_url(self.endpoint_url or "AWS"))

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.url!r})"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return ObjectInfo(key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise ObjectNotFound(key, self.url) from None
            raise
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.client.exceptions.ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, sorted (S3 itself lists in UTF-8 byte order, which
        is code-point order: the same)."""
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix)
        keys = [item["Key"][len(base):] for page in pages for item in page.get("Contents", [])]
        return iter(sorted(keys))

    def uri(self, key: str) -> str:
        """s3://bucket/prefix/key."""
        return f"s3://{self.bucket}/{self._key(key)}"
