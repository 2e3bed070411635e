"""The rules of etl.serve.security: the allow-list setting, loopback addresses, the token."""

from __future__ import annotations

import pytest

from etl.core.config import load_settings
from etl.core.errors import ConfigError
from etl.serve.security import (DEMO_SPEC, allowed_pipelines, check_bind, is_loopback,
                                token_matches)


def _settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(env=env)


def test_the_allow_list_is_the_setting_else_the_pipeline_setting_else_the_demo(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    assert allowed_pipelines(_settings()) == (DEMO_SPEC,)
    assert allowed_pipelines(_settings(ETL_PIPELINE="a.b:c")) == ("a.b:c",)
    assert allowed_pipelines(_settings(ETL_SERVE_PIPELINES="a.b:c, demo,a.b:c\nx:y",
                                       ETL_PIPELINE="z:z")) == ("a.b:c", DEMO_SPEC, "x:y")
    with pytest.raises(ConfigError, match="ETL_SERVE_PIPELINES: 'os.system' is not"):
        allowed_pipelines(_settings(ETL_SERVE_PIPELINES="a:b,os.system"))


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False),
])
def test_only_loopback_addresses_bind_without_a_token(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, "")
    else:
        with pytest.raises(ConfigError, match="ETL_API_TOKEN"):
            check_bind(host, "")
    check_bind(host, "a-token")


def test_the_token_is_a_bearer_token_compared_whole() -> None:
    assert token_matches("Bearer abc", "abc") and token_matches("bearer abc", "abc")
    for header in (None, "", "abc", "Basic abc", "Bearer ab", "Bearer abcd", "Bearer "):
        assert not token_matches(header, "abc"), header
    assert not token_matches("Bearer ", "")  # no token configured: nothing matches
