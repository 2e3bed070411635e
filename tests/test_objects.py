"""Object stores: local files and S3 (boto3 over HTTP against moto's server), one suite."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from etl.errors import ObjectNotFound, UnsupportedURL
from etl.objects import ObjectStore, open_objects
from etl.objects.local import LocalObjectStore
from etl.objects.s3 import S3ObjectStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(f"file://{tmp_path}/objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(f"s3://{bucket}/pfx", endpoint_url=endpoint)


def test_round_trip_with_content_hash(store: ObjectStore) -> None:
    # Given some bytes, When stored and read back, Then they are equal and hashed correctly
    data = b"\x00raw payload\xff" * 1000
    info = store.put_bytes("runs/r/raw/batch=1.parquet", data)
    assert store.get_bytes("runs/r/raw/batch=1.parquet") == data
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put_bytes("a/b", b"old")
    store.put_bytes("a/b", b"new")
    assert store.get_bytes("a/b") == b"new"


def test_missing_key_names_the_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="runs/x/missing.parquet"):
        store.get_bytes("runs/x/missing.parquet")
    assert not store.exists("runs/x/missing.parquet")


def test_exists_delete_and_sorted_listing(store: ObjectStore) -> None:
    for key in ("runs/r/raw/2", "runs/r/raw/10", "runs/r/staged/1", "other/1"):
        store.put_bytes(key, b"x")
    assert list(store.list("runs/r/raw/")) == ["runs/r/raw/10", "runs/r/raw/2"]
    assert list(store.list("runs/")) == ["runs/r/raw/10", "runs/r/raw/2", "runs/r/staged/1"]
    store.delete("runs/r/raw/2")
    store.delete("runs/r/raw/2")  # deleting twice is fine
    assert not store.exists("runs/r/raw/2") and store.exists("runs/r/raw/10")


def test_uri_and_invalid_keys(store: ObjectStore) -> None:
    uri = store.uri("runs/r/raw/1")
    assert uri.startswith(("file:///", "s3://")) and uri.endswith("runs/r/raw/1")
    for bad in ("", "/abs", "../escape", "a/../../b"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_bytes(bad, b"x")


def test_local_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an object, When a rewrite fails just before the rename (a crash mid-write)
    store = LocalObjectStore(str(tmp_path))
    store.put_bytes("k", b"old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put_bytes("k", b"new")
    monkeypatch.undo()
    # Then the old content is intact and no temporary file is left or listed
    assert store.get_bytes("k") == b"old"
    assert list(store.list()) == ["k"]
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_open_objects_by_url(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    assert isinstance(open_objects(str(tmp_path)), LocalObjectStore)
    s3 = open_objects(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    assert isinstance(s3, S3ObjectStore) and s3.url == f"s3://{s3_bucket}/p"
    with pytest.raises(UnsupportedURL, match="file://path .*s3://bucket/prefix"):
        open_objects("ftp://host/dir")


def test_s3_url_never_shows_credentials(s3_endpoint: str) -> None:
    store = S3ObjectStore("s3://AKIA:hunter2@bucket/p?aws_secret_access_key=zzz",
                          endpoint_url=s3_endpoint)
    assert "hunter2" not in store.url and "zzz" not in store.url and "AKIA" not in store.url
    assert store.bucket == "bucket" and store.prefix == "p"


def test_embedded_run_with_objects_on_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    # Given a pipeline whose raw, staged and quarantine objects live on S3 (moto over HTTP)
    import pandas as pd

    from etl.context import RunContext
    from etl.embedded import run_embedded
    from etl.pipeline import Pipeline
    from etl.runs import open_run
    from etl.sinks import ParquetSink
    from etl.sources import FileSource
    from etl.state import open_state
    from shards import HashShards
    from stages import Cast

    frame = pd.DataFrame({"id": range(1200), "v": [str(i) if i % 100 else "bad" for i in range(1200)]})
    frame.to_parquet(tmp_path / "src.parquet")
    # The source file itself is read from S3 too
    objects = S3ObjectStore(f"s3://{s3_bucket}/etl", endpoint_url=s3_endpoint)
    S3ObjectStore(f"s3://{s3_bucket}", endpoint_url=s3_endpoint).put_bytes(
        "input/src.parquet", (tmp_path / "src.parquet").read_bytes())
    pipeline = Pipeline(name="s3demo",
                        source=FileSource(f"s3://{s3_bucket}/input/src.parquet", s3_endpoint_url=s3_endpoint),
                        sink=ParquetSink(str(tmp_path / "sink")), key=["id"], shards=HashShards("id", 4),
                        stages=[Cast({"v": "Int64"})], batch_size=200)
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    run, _ = open_run(state, pipeline, spec="tests:unused")
    # When the run is worked
    result = run_embedded(RunContext.build(run, pipeline, state, objects), threads=2)
    # Then it completes, every good row is loaded once, the 12 bad ones are quarantined on S3
    assert result.completed
    assert sorted(pipeline.sink.read_all()["id"]) == [i for i in range(1200) if i % 100]
    assert list(objects.list(f"runs/{run.run_id}/raw/"))
    assert len(list(objects.list(f"runs/{run.run_id}/quarantine/"))) >= 1
    assert sum(c.rows_quarantined for c in state.list_checkpoints(run.run_id)) == 12
