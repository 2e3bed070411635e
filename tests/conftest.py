"""Shared fixtures: services the tests talk to, and the skip-or-fail rule for missing ones.

A test that needs a service skips with a clear reason when it is missing, except when the
environment variable CI is set: there a missing service fails the run.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Iterator

import pytest

IN_CI = bool(os.environ.get("CI"))


def service_missing(what: str, reason: str) -> None:
    """Skip (developer machine) or fail (CI) because `what` is not reachable."""
    message = f"{what} not available: {reason}"
    if IN_CI:
        pytest.fail(message + " (CI is set, so a missing service is a failure)")
    pytest.skip(message)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mongomock_accepts_new_pymongo() -> None:
    """mongomock 4.3 predates pymongo 4.11, whose bulk ReplaceOne/UpdateOne pass a `sort`
    argument the fake's builder does not take. Drop it (it is None for our writes) so the
    fake keeps standing in for a server; a real server needs no such help."""
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_replace", "add_update"):
        original = getattr(BulkOperationBuilder, name)
        if getattr(original, "_etl_shim", False):
            continue

        def shim(self, *args, _original=original, sort=None, **kwargs):  # type: ignore[no-untyped-def]
            assert sort is None, "a sorted bulk write cannot be faked by mongomock"
            return _original(self, *args, **kwargs)

        shim._etl_shim = True  # type: ignore[attr-defined]
        setattr(BulkOperationBuilder, name, shim)


@pytest.fixture
def mongo_client() -> Iterator[object]:
    """A pymongo-compatible client: a real server when ETL_TEST_MONGO_URL is set, else
    mongomock (in-process, same pymongo API)."""
    url = os.environ.get("ETL_TEST_MONGO_URL")
    if url:
        import pymongo

        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
        try:
            client.admin.command("ping")
        except Exception as exc:  # noqa: BLE001 - any connection failure means "missing"
            service_missing("MongoDB at ETL_TEST_MONGO_URL", str(exc))
        yield client
        client.close()
    else:
        mongomock = pytest.importorskip("mongomock")
        _mongomock_accepts_new_pymongo()
        yield mongomock.MongoClient(tz_aware=True)


@pytest.fixture
def mongo_db_name() -> str:
    """A database name of its own for each test, so real-server runs do not collide."""
    return f"etl_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 HTTP server on localhost; yields its endpoint URL. Credentials are fake."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the moto server."""
    import boto3

    name = f"etl-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("ETL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if not port_open("127.0.0.1", 6379):
        service_missing("Redis on 127.0.0.1:6379", "port does not answer")
    return url


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = os.environ.get("ETL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ on 127.0.0.1:5672", "port does not answer")
    return url


@pytest.fixture(scope="session")
def reference():  # type: ignore[no-untyped-def]
    """The demo's clean table computed with plain pandas (once per test session)."""
    from tests.flights import reference_frame

    return reference_frame()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """A Cluster on RabbitMQ, or on the broker named by indirect parametrisation."""
    from tests.cluster import Cluster, broker_url

    made = Cluster(tmp_path, broker_url(getattr(request, "param", "rabbitmq")))
    yield made
    made.stop()


#: The machine's SQL servers (trust / no password), overridable per environment.
SQL_SERVERS = {
    "postgresql": (os.environ.get("ETL_TEST_POSTGRES_URL",
                                  "postgresql://postgres@127.0.0.1:5432/test"), 5432, "PostgreSQL"),
    "mariadb": (os.environ.get("ETL_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test"),
                3306, "MariaDB"),
}


def sql_server_url(kind: str) -> str:
    """The URL of the `kind` SQL server after checking it answers (skip or fail if not)."""
    url, port, what = SQL_SERVERS[kind]
    if not port_open("127.0.0.1", port):
        service_missing(what, f"nothing listens on 127.0.0.1:{port}")
    return url


@pytest.fixture
def postgres_url() -> str:
    """PostgreSQL's plain URL (`postgresql://...`), database `test`."""
    return sql_server_url("postgresql")


@pytest.fixture
def mariadb_url() -> str:
    """MariaDB's plain URL (`mysql://...`), database `test`."""
    return sql_server_url("mariadb")


@pytest.fixture
def postgres_table(postgres_url: str) -> Iterator[str]:
    """A table name of this test's own in PostgreSQL; the table and its SqlSink ledger rows
    are dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{name}"'))
            if sqlalchemy.inspect(conn).has_table("etl_loads"):
                conn.execute(sqlalchemy.text("DELETE FROM etl_loads WHERE sink_table = :t"), {"t": name})
    finally:
        engine.dispose()
