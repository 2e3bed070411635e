"""Settings resolution and secret masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.core.config import DEFAULTS, load_settings
from etl.core.errors import ConfigError, UnsupportedURL
from etl.core.logs import MaskSecrets
from etl.stores.objects import open_objects
from etl.stores.state import open_state
from etl.core.urls import mask_url


def test_defaults_need_no_services(tmp_path: Path) -> None:
    # Given an empty directory and no ETL_* environment
    # When settings are loaded
    settings = load_settings(cwd=tmp_path, env={})
    # Then every backend is the embedded default
    assert settings.state_url == DEFAULTS["state_url"] == "sqlite:///.etl/state.db"
    assert settings.broker_url == "stub://"
    assert set(settings.sources.values()) == {"default"}


def test_environment_beats_etl_toml_beats_setup_cfg(tmp_path: Path) -> None:
    # Given all three layers set different values
    (tmp_path / "etl.toml").write_text('[etl]\nstate_url = "sqlite:///from-toml.db"\n'
                                       'objects_url = "file://toml-objects"\n')
    (tmp_path / "setup.cfg").write_text("[etl]\nobjects_url = file://cfg-objects\n"
                                        "pipeline = pkg.mod:p\n")
    env = {"ETL_STATE_URL": "sqlite:///from-env.db"}
    # When settings are loaded
    settings = load_settings(cwd=tmp_path, env=env)
    # Then each value comes from the highest layer that has it
    assert settings.state_url == "sqlite:///from-env.db"
    assert settings.objects_url == "file://toml-objects"
    assert settings.pipeline == "pkg.mod:p"
    assert settings.sources["state_url"] == "environment"
    assert settings.sources["objects_url"] == "etl.toml"
    assert settings.sources["pipeline"] == "setup.cfg"


@pytest.mark.parametrize("content", ["state_url = [unclosed", "nonsense_key = 'x'",
                                     "state_url = 3"])
def test_unreadable_or_wrong_etl_toml_is_a_clear_error(tmp_path: Path, content: str) -> None:
    # Given a broken etl.toml
    (tmp_path / "etl.toml").write_text(content)
    # When settings are loaded, Then a ConfigError names the file
    with pytest.raises(ConfigError, match="etl.toml"):
        load_settings(cwd=tmp_path, env={})


def test_mask_url_hides_passwords_and_secret_parameters() -> None:
    assert mask_url("mongodb://etl:s3cr3t@db:27017/etl") == "mongodb://etl:***@db:27017/etl"
    assert mask_url("amqp://guest:guest@127.0.0.1:5672/%2F") == "amqp://guest:***@127.0.0.1:5672/%2F"
    assert mask_url("redis://:pw@host/0") == "redis://:***@host/0"
    assert "abc" not in mask_url("s3://bucket/p?aws_secret_access_key=abc&x=1")
    text = "cannot reach mongodb://u:hunter2@h/db and redis://:pw2@r/0"
    assert "hunter2" not in mask_url(text) and "pw2" not in mask_url(text)
    assert mask_url("sqlite:///.etl/state.db") == "sqlite:///.etl/state.db"
    # a password holding an unencoded "@" or a "/" (AWS secrets often do) is hidden whole
    assert mask_url("mongodb://u:p@ss@host/db") == "mongodb://u:***@host/db"
    assert mask_url("s3://AKIA:wJalr/XUtn@bucket/p") == "s3://AKIA:***@bucket/p"
    assert "Tok3n" not in mask_url("mongodb://h/x?authMechanismProperties=AWS_SESSION_TOKEN:Tok3n")


def test_log_records_are_masked() -> None:
    # Given a log record whose arguments hold a URL with a password
    import logging

    record = logging.LogRecord("etl", logging.INFO, __file__, 1, "connecting to %s",
                               ("mongodb://u:topsecret@h/db",), None)
    # When the filter runs
    MaskSecrets().filter(record)
    # Then the final message has no password
    assert "topsecret" not in record.getMessage()
    assert "mongodb://u:***@h/db" in record.getMessage()


@pytest.mark.parametrize("opener,url", [(open_state, "postgres://x/y"),
                                        (open_objects, "ftp://host/dir")])
def test_unknown_scheme_lists_supported_ones(opener, url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedURL, match="use one of"):
        opener(url)


def test_queue_setting_must_be_a_dramatiq_queue_name(tmp_path: Path) -> None:
    assert load_settings(cwd=tmp_path, env={"ETL_QUEUE": "etl.orders-2"}).queue == "etl.orders-2"
    with pytest.raises(ConfigError, match="queue 'bad queue' \\(from environment\\) must start"):
        load_settings(cwd=tmp_path, env={"ETL_QUEUE": "bad queue"})


def test_broker_urls_by_scheme_and_redis_options_from_the_query() -> None:
    from etl.brokers import broker_kind
    from etl.brokers.redis import split_redis_options

    assert [broker_kind(u) for u in ("stub://", "amqp://h", "amqps://h", "redis://h", "rediss://h")] == [
        "stub", "rabbitmq", "rabbitmq", "redis", "redis"]
    with pytest.raises(UnsupportedURL, match="unsupported broker URL 'kafka://u:\\*\\*\\*@h'"):
        broker_kind("kafka://u:secret@h")
    url, options = split_redis_options(
        "redis://:pw@h:6379/2?heartbeat_timeout=5000&namespace=etl&socket_timeout=3")
    assert url == "redis://:pw@h:6379/2?socket_timeout=3"
    assert options == {"heartbeat_timeout": 5000, "namespace": "etl"}
    with pytest.raises(ConfigError, match="maintenance_chance must be an integer"):
        split_redis_options("redis://h/0?maintenance_chance=often")


def test_a_pipeline_queue_must_be_a_dramatiq_queue_name() -> None:
    import dataclasses

    from etl.demo import pipeline as demo

    base = demo() if callable(demo) else demo
    # Given the demo pipeline routed to a queue of its own
    routed = dataclasses.replace(base, queue="etl.flights-urgent")
    # Then its messages go there, and `etl describe` says so
    assert routed.queue_or("etl") == "etl.flights-urgent" and base.queue_or("etl") == "etl"
    assert "queue:   etl.flights-urgent" in routed.describe()
    # And a name Dramatiq would refuse fails when the pipeline is built, naming the pipeline
    with pytest.raises(ConfigError, match="queue 'urgent flights' \\(from pipeline flights\\)"):
        dataclasses.replace(base, queue="urgent flights")


def test_plain_database_urls_are_spoken_through_the_drivers_the_sql_extra_installs() -> None:
    pytest.importorskip("sqlalchemy")
    from etl.core.urls import with_sql_driver
    from etl.sources.sql import SqlSource

    # Given plain database URLs, Then each names the driver the `sql` extra installs
    assert with_sql_driver("postgresql://u:pw@db/x") == "postgresql+psycopg://u:pw@db/x"
    assert with_sql_driver("mysql://root@db/x") == "mysql+pymysql://root@db/x"
    # And a URL that names its driver, or another database, is left as it is
    assert with_sql_driver("postgresql+psycopg2://db/x") == "postgresql+psycopg2://db/x"
    assert with_sql_driver("sqlite:///x.db") == "sqlite:///x.db"
    # And a SqlSource on a plain postgresql:// URL opens psycopg 3, not psycopg2
    source = SqlSource("postgresql://u:pw@127.0.0.1:1/x", table="t", key="id")
    assert source._engine().dialect.driver == "psycopg"


def test_results_ttl_setting_is_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from datetime import timedelta

    from etl.core.config import load_settings
    from etl.core.errors import ConfigError
    from etl.stores import results_ttl

    monkeypatch.chdir(tmp_path)
    # Given no setting, Then a day; given 90, Then 90 s; given nonsense, Then one line
    monkeypatch.delenv("ETL_RESULTS_TTL", raising=False)
    assert results_ttl(load_settings()) == timedelta(days=1)
    monkeypatch.setenv("ETL_RESULTS_TTL", "90")
    assert results_ttl(load_settings()) == timedelta(seconds=90)
    for bad in ("soon", "0"):
        monkeypatch.setenv("ETL_RESULTS_TTL", bad)
        with pytest.raises(ConfigError, match="ETL_RESULTS_TTL"):
            results_ttl(load_settings())
