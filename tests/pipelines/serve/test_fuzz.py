"""Schemathesis against the in-process ASGI app on a tiny random model: bodies generated from the app's own OpenAPI
document (valid and invalid ones), a bounded number per operation with a fixed seed; no server error, every status,
content type, header and body as documented. Marked `serve` (deselect with `-m "not serve"`); under a minute."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipelines.serve.app import create_app  # noqa: E402

pytestmark = pytest.mark.serve

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 100, schemathesis.GenerationMode.NEGATIVE: 60}


@pytest.fixture(scope="module")
def schema(service):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


def fuzz(op, mode, seen: dict[int, int]) -> None:
    @settings(max_examples=EXAMPLES[mode], derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call_and_validate(checks=CHECKS)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    try:
        run()
    except Unsatisfiable:  # an operation without parameters has no invalid input
        assert mode == schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET"


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
def test_no_server_error_and_no_schema_violation(schema, service, mode):
    statuses: dict[str, dict[int, int]] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        fuzz(op, mode, statuses.setdefault(op.label, {}))
    assert any(statuses.values()), statuses
    assert all(code < 500 for codes in statuses.values() for code in codes), statuses
    assert service.running == 0 and service.waiting == 0  # nothing left behind
