"""Object stores: local files and S3 (boto3 over HTTP against moto's server), one suite."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from etl.core.errors import ObjectNotFound, UnsupportedURL
from etl.stores.objects import ObjectStore, open_objects
from etl.stores.objects.local import LocalObjectStore
from etl.stores.objects.s3 import S3ObjectStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(f"file://{tmp_path}/objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(f"s3://{bucket}/pfx", endpoint_url=endpoint)


def _boto(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


# --- one suite, both backends -----------------------------------------------------------


def test_round_trip_with_content_hash(store: ObjectStore) -> None:
    # Given some bytes, When stored and read back
    data = b"\x00raw payload\xff" * 1000
    info = store.put_bytes("runs/r/raw/batch=1.parquet", data)
    # Then they are equal, and the info carries the key, size and sha256 hashlib computes
    assert store.get_bytes("runs/r/raw/batch=1.parquet") == data
    assert info.key == "runs/r/raw/batch=1.parquet"
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)
    assert isinstance(store, ObjectStore)


def test_overwrite_replaces(store: ObjectStore) -> None:
    # Given an object, When written again with other bytes, Then only the new bytes are read
    store.put_bytes("a/b", b"old")
    info = store.put_bytes("a/b", b"new")
    assert store.get_bytes("a/b") == b"new" and info.sha256 == hashlib.sha256(b"new").hexdigest()
    assert list(store.list("a/")) == ["a/b"]


def test_missing_key_names_the_key(store: ObjectStore) -> None:
    # When a key that was never written is read, Then ObjectNotFound names key and store
    with pytest.raises(ObjectNotFound, match="runs/x/missing.parquet") as caught:
        store.get_bytes("runs/x/missing.parquet")
    assert caught.value.key == "runs/x/missing.parquet" and store.url in str(caught.value)
    assert not store.exists("runs/x/missing.parquet")


def test_a_key_prefix_is_not_an_object(store: ObjectStore) -> None:
    # Given an object under runs/r/ (a directory on disk, a mere prefix on S3)
    store.put_bytes("runs/r/x", b"x")
    # Then runs/r itself is no object on either backend, and deleting it harms nothing
    with pytest.raises(ObjectNotFound):
        store.get_bytes("runs/r")
    assert not store.exists("runs/r")
    store.delete("runs/r")
    assert store.get_bytes("runs/r/x") == b"x"


def test_exists_delete_and_sorted_listing(store: ObjectStore) -> None:
    # Given objects under several prefixes
    for key in ("runs/r/raw/2", "runs/r/raw/10", "runs/r/raw2/1", "runs/r/staged/1", "other/1"):
        store.put_bytes(key, b"x")
    # Then listing is by string prefix (as S3 does it) and sorted
    assert list(store.list("runs/r/raw/")) == ["runs/r/raw/10", "runs/r/raw/2"]
    assert list(store.list("runs/r/raw")) == ["runs/r/raw/10", "runs/r/raw/2", "runs/r/raw2/1"]
    assert list(store.list("runs/r/st")) == ["runs/r/staged/1"]
    assert list(store.list()) == ["other/1", "runs/r/raw/10", "runs/r/raw/2", "runs/r/raw2/1",
                                  "runs/r/staged/1"]
    assert list(store.list("nothing/")) == []
    # When one is deleted (twice: deleting a missing object is fine)
    store.delete("runs/r/raw/2")
    store.delete("runs/r/raw/2")
    # Then it is gone and its neighbour is not
    assert not store.exists("runs/r/raw/2") and store.exists("runs/r/raw/10")
    assert list(store.list("runs/r/raw/")) == ["runs/r/raw/10"]


@pytest.mark.parametrize("bad", ["", "/abs", "../escape", "a/../../b", "a//b", "a/./b", "a/",
                                 "a/.tmp-x"])
def test_invalid_keys_are_rejected(store: ObjectStore, bad: str) -> None:
    # When a key is absolute, climbs out, has empty or dot segments, or looks like a temp file
    # Then every operation refuses it before touching storage
    for operation in (lambda: store.put_bytes(bad, b"x"), lambda: store.get_bytes(bad),
                      lambda: store.exists(bad), lambda: store.delete(bad)):
        with pytest.raises(ValueError, match="invalid object key"):
            operation()
    assert list(store.list()) == []


def test_invalid_listing_prefixes_are_rejected(store: ObjectStore) -> None:
    for bad in ("/abs", "../", "a/../", "a/.."):
        with pytest.raises(ValueError, match="invalid object key prefix"):
            list(store.list(bad))


def test_uri_names_the_full_location(store: ObjectStore, tmp_path: Path) -> None:
    uri = store.uri("runs/r/raw/1")
    if isinstance(store, LocalObjectStore):
        assert uri == f"file://{tmp_path.resolve()}/objects/runs/r/raw/1"
    else:
        assert uri == f"s3://{store.bucket}/pfx/runs/r/raw/1"  # type: ignore[attr-defined]


# --- local only --------------------------------------------------------------------------


def test_local_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an object, When a rewrite fails just before the rename (a crash mid-write)
    store = LocalObjectStore(str(tmp_path))
    store.put_bytes("k", b"old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put_bytes("k", b"new")
    monkeypatch.undo()
    # Then the old content is intact and no temporary file is left or listed
    assert store.get_bytes("k") == b"old"
    assert list(store.list()) == ["k"]
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_local_listing_skips_temp_files_a_killed_writer_left(tmp_path: Path) -> None:
    # Given a temporary file left by a process killed mid-write (no cleanup ran)
    store = LocalObjectStore(str(tmp_path))
    store.put_bytes("runs/a", b"a")
    (tmp_path / "runs" / ".tmp-abc123").write_bytes(b"half")
    # Then listings never show it
    assert list(store.list()) == ["runs/a"] and list(store.list("runs/")) == ["runs/a"]


def test_local_urls_plain_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a working directory, When stores are opened by the three URL forms
    monkeypatch.chdir(tmp_path)
    relative = LocalObjectStore("file://data/objects")
    plain = LocalObjectStore("data/objects")
    absolute = LocalObjectStore(f"file://{tmp_path}/data/objects")
    # Then they are one directory, created on the first write, with file:/// URIs
    relative.put_bytes("x/y", b"1")
    assert plain.get_bytes("x/y") == b"1" and absolute.get_bytes("x/y") == b"1"
    assert (tmp_path / "data" / "objects" / "x" / "y").read_bytes() == b"1"
    assert relative.url == absolute.url == f"file://{tmp_path.resolve()}/data/objects"
    assert relative.path("x/y") == tmp_path.resolve() / "data" / "objects" / "x" / "y"
    assert relative.uri("x/y").startswith("file:///")


# --- S3 only -----------------------------------------------------------------------------


def test_s3_objects_live_under_the_prefix_only(s3_endpoint: str, s3_bucket: str) -> None:
    # Given two stores on one bucket whose prefixes share a beginning
    one = S3ObjectStore(f"s3://{s3_bucket}/pfx", endpoint_url=s3_endpoint)
    two = S3ObjectStore(f"s3://{s3_bucket}/pfx2/", endpoint_url=s3_endpoint)
    one.put_bytes("k", b"1")
    two.put_bytes("k", b"2")
    # Then each sees its own object, stored under its prefix
    assert list(one.list()) == ["k"] and list(two.list()) == ["k"]
    assert one.get_bytes("k") == b"1" and two.get_bytes("k") == b"2"
    keys = [o["Key"] for o in _boto(s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["pfx/k", "pfx2/k"]
    # And a store on the whole bucket sees both
    whole = S3ObjectStore(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    assert list(whole.list()) == ["pfx/k", "pfx2/k"] and whole.uri("pfx/k") == f"s3://{s3_bucket}/pfx/k"


def test_s3_listing_follows_continuation_pages(s3_endpoint: str, s3_bucket: str) -> None:
    # Given a client whose listing pages hold 2 keys (real S3 pages hold 1000: same protocol,
    # continuation tokens over HTTP, without writing thousands of objects)
    client = _boto(s3_endpoint)
    real_get_paginator = client.get_paginator

    class SmallPages:
        def __init__(self, name: str) -> None:
            self.paginator = real_get_paginator(name)

        def paginate(self, **kwargs: object):  # type: ignore[no-untyped-def]
            return self.paginator.paginate(PaginationConfig={"PageSize": 2}, **kwargs)

    client.get_paginator = SmallPages  # type: ignore[method-assign]
    store = S3ObjectStore(f"s3://{s3_bucket}/many", client=client)
    for i in (7, 3, 11, 0, 5):
        store.put_bytes(f"k{i:02d}", b"")
    # Then every page is read, and the keys come sorted
    assert list(store.list()) == ["k00", "k03", "k05", "k07", "k11"]
    assert list(store.list("k0")) == ["k00", "k03", "k05", "k07"]


def test_s3_missing_bucket_is_not_a_missing_object(s3_endpoint: str) -> None:
    # A store on a bucket that does not exist fails loudly, not as "object not found"
    store = S3ObjectStore("s3://no-such-bucket-etl/p", endpoint_url=s3_endpoint)
    with pytest.raises(Exception) as caught:
        store.get_bytes("k")
    assert not isinstance(caught.value, ObjectNotFound) and "NoSuchBucket" in str(caught.value)


def test_open_objects_by_url(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    # Given URLs of each kind, Then open_objects returns the matching store
    assert isinstance(open_objects(str(tmp_path)), LocalObjectStore)
    assert isinstance(open_objects(f"file://{tmp_path}"), LocalObjectStore)
    s3 = open_objects(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    assert isinstance(s3, S3ObjectStore) and s3.url == f"s3://{s3_bucket}/p"
    s3.put_bytes("k", b"v")
    assert _boto(s3_endpoint).get_object(Bucket=s3_bucket, Key="p/k")["Body"].read() == b"v"
    # And an unknown scheme is refused with the supported ones listed
    with pytest.raises(UnsupportedURL, match="'ftp'.*file://path .*s3://bucket/prefix"):
        open_objects("ftp://host/dir")


def test_s3_endpoint_from_environment(s3_endpoint: str, s3_bucket: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Given ETL_S3_ENDPOINT_URL, When a store is opened without endpoint_url, Then it uses it
    monkeypatch.setenv("ETL_S3_ENDPOINT_URL", s3_endpoint)
    store = open_objects(f"s3://{s3_bucket}/env")
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v" and store.endpoint_url == s3_endpoint  # type: ignore[attr-defined]


def test_s3_url_never_shows_credentials(s3_endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given credentials someone put in the URL
    caplog.set_level("DEBUG", logger="etl.stores.objects.s3")
    store = S3ObjectStore("s3://AKIA:hunter2@bucket/p?aws_secret_access_key=zzz",
                          endpoint_url=s3_endpoint)
    # Then neither the URL, the repr, the URIs nor the log show them
    shown = " ".join([store.url, repr(store), store.uri("k"), caplog.text])
    assert "hunter2" not in shown and "zzz" not in shown and "AKIA" not in shown
    assert store.bucket == "bucket" and store.prefix == "p" and store.url == "s3://bucket/p"
    with pytest.raises(ValueError, match="names no bucket"):
        S3ObjectStore("s3:///p", endpoint_url=s3_endpoint)


def test_s3_client_uses_standard_retries(s3_endpoint: str) -> None:
    store = S3ObjectStore("s3://bucket/p", endpoint_url=s3_endpoint)
    assert store.client.meta.config.retries["mode"] == "standard"


def test_embedded_run_with_objects_on_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    # Given a pipeline whose raw, staged and quarantine objects live on S3 (moto over HTTP)
    import pandas as pd

    import etl
    from etl.inspect.inspector import Inspector
    from etl.pipeline import Pipeline
    from etl.stores import Stores
    from etl.sinks.parquet import ParquetSink
    from etl.sources.files import FileSource
    from etl.stores.state import open_state
    from shards import HashShards
    from stages import Cast

    frame = pd.DataFrame({"id": range(1200), "v": [str(i) if i % 100 else "bad" for i in range(1200)]})
    frame.to_parquet(tmp_path / "src.parquet")
    # The source file itself is read from S3 too; raw batches are copies (not pointers into
    # the file), so they are written to the store as well
    objects = S3ObjectStore(f"s3://{s3_bucket}/etl", endpoint_url=s3_endpoint)
    S3ObjectStore(f"s3://{s3_bucket}", endpoint_url=s3_endpoint).put_bytes(
        "input/src.parquet", (tmp_path / "src.parquet").read_bytes())
    pipeline = Pipeline(name="s3demo",
                        source=FileSource(f"s3://{s3_bucket}/input/src.parquet", s3_endpoint_url=s3_endpoint),
                        sink=ParquetSink(str(tmp_path / "sink")), key=["id"], shards=HashShards("id", 4),
                        stages=[Cast({"v": "Int64"})], batch_size=200, raw_landing="copy")
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    # When the run is worked
    started = time.monotonic()
    result = etl.run(pipeline, spec="tests:unused", stores=Stores(state, objects), processes=1)
    # Then it completes, every good row is loaded once, the raw copies are on S3
    assert result.completed and time.monotonic() - started < 30
    assert sorted(pipeline.sink.read_all()["id"]) == [i for i in range(1200) if i % 100]
    assert list(objects.list(f"runs/{result.run_id}/raw/"))
    # And the 12 bad rows rode in their cleans' commits to the state store: no S3 request
    assert sum(c.rows_quarantined for c in state.list_checkpoints(result.run_id)) == 12
    assert not list(objects.list(f"runs/{result.run_id}/quarantine/"))
    rows = Inspector(state, objects).quarantine(result.run_id)
    assert sorted(rows["id"]) == list(range(0, 1200, 100)) and set(rows["v"]) == {"bad"}


# --- bugs found in review, now fixed ------------------------------------------------------


def test_s3_url_hides_a_secret_that_contains_a_slash(s3_endpoint: str) -> None:
    # Given a URL whose userinfo holds an AWS-style secret with a "/" in it
    store = S3ObjectStore("s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/p", endpoint_url=s3_endpoint)
    # Then no part of the key pair is shown, and bucket and prefix are the real ones
    shown = " ".join([store.url, repr(store), store.uri("k")])
    assert "wJalr" not in shown and "XUtnFEMI" not in shown and "AKIAEXAMPLE" not in shown
    assert store.bucket == "bucket" and store.prefix == "p"
