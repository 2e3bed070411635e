"""Schemathesis against the OpenAPI spec a real `etl serve` serves at /openapi.json: for
inputs made from the spec (valid and not), no answer is a 5xx, and every answer has a
status code, content type and body the spec documents."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="etl serve needs the serve extra")
schemathesis = pytest.importorskip("schemathesis", reason="the API fuzz test needs schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance,  # noqa: E402
                                               response_schema_conformance,
                                               status_code_conformance)

from tests.serve_process import TOKEN, Served, kill_children, project  # noqa: E402

pytestmark = pytest.mark.timeout(900)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def served_spec(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server with one completed demo run (so run lists are not empty), and its spec."""
    workdir: Path = tmp_path_factory.mktemp("serve-schema")
    server = Served(workdir, project(workdir))
    started = server.start({"pipeline": "etl.demo:pipeline", "shards": 2, "run_id": "schema-demo"})
    assert started.status_code == 202, started.text
    assert server.wait_done("schema-demo")["status"] == "completed"
    yield schemathesis.openapi.from_url(server.url + "/openapi.json")
    server.stop()
    kill_children(workdir)


def test_every_answer_matches_the_spec_and_none_is_a_5xx(served_spec) -> None:  # type: ignore[no-untyped-def]
    # Given inputs made from the spec for every operation, sent with the token
    # (schemathesis' own pytest loader needs pytest internals that pytest 9 no longer has,
    # so each operation's strategy is driven here with hypothesis)
    operations = [result.ok() for result in served_spec.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation, mode in itertools.product(operations, GenerationMode):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def answers_by_the_spec(case) -> None:  # type: ignore[no-untyped-def]
            # When each is sent, then no answer is a server error and each matches the spec
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        try:
            answers_by_the_spec()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise  # only an operation without inputs has nothing to make invalid
