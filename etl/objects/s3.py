"""S3 object store (boto3), for production: `s3://bucket/prefix`.

S3 puts are atomic, so no temporary objects are needed. The endpoint can be overridden for
MinIO, Ceph, moto and others (argument, or ETL_S3_ENDPOINT_URL); credentials come from the
usual AWS chain, never from the URL, and the URL shown in logs is masked anyway.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator

from etl.errors import ObjectNotFound
from etl.objects.base import ObjectInfo
from etl.urls import mask_url, strip_query

_MISSING = ("NoSuchKey", "404", "NotFound")


class S3ObjectStore:
    """Objects under `prefix` in one bucket."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, client: Any = None) -> None:
        if not url.startswith("s3://"):
            raise ValueError(f"S3 URL must look like s3://bucket/prefix, got {mask_url(url)!r}")
        location = strip_query(url)[len("s3://"):]
        self.bucket, _, prefix = location.partition("/")
        if "@" in self.bucket:  # credentials do not belong in the URL; never keep or show them
            self.bucket = self.bucket.rsplit("@", 1)[1]
        if not self.bucket:
            raise ValueError(f"S3 URL names no bucket: {mask_url(url)!r}")
        self.prefix = prefix.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3", endpoint_url=endpoint_url or os.environ.get("ETL_S3_ENDPOINT_URL") or None,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}))
        self.client = client

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}: must be a relative path inside the store")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return ObjectInfo(key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise ObjectNotFound(key, self.url) from None
            raise
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        keys = [item["Key"][strip:] for page in pages for item in page.get("Contents", [])]
        return iter(sorted(keys))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"
