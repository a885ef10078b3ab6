"""Schemathesis drives the generated OpenAPI spec of the running server: valid and invalid requests, no 5xx.

Positive cases must also be accepted (2xx) and conform to the documented responses; negative cases (schema-
violating bodies) must be rejected with a documented 4xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving.conftest import Stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OPERATIONS = [("/v1/score", "POST"), ("/v1/model", "GET"), ("/healthz", "GET"), ("/readyz", "GET"),
              ("/metrics", "GET")]


@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(stack.server.url + "/openapi.json")


def test_openapi_documents_the_api(stack: Stack) -> None:
    spec = httpx.get(stack.server.url + "/openapi.json", timeout=10).json()
    assert {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops} == set(OPERATIONS)
    req = spec["components"]["schemas"]["ScoreRequest"]["properties"]["candidates"]
    assert req["minItems"] == 1 and req["maxItems"] == 300  # the served limit (--max-candidates)


CASES = [(p, m, GenerationMode.POSITIVE) for p, m in OPERATIONS] + [("/v1/score", "POST", GenerationMode.NEGATIVE)]


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m}{p}-{g.value}" for p, m, g in CASES])
def test_fuzz_no_server_errors(stack: Stack, api_schema: schemathesis.BaseSchema, path: str, method: str,
                               mode: GenerationMode) -> None:
    op = api_schema[path][method]
    strategy = op.as_strategy(generation_mode=mode)
    n = 60 if path == "/v1/score" else 5
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection if mode is GenerationMode.NEGATIVE else positive_data_acceptance]

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(strategy)
        resp = case.call(base_url=stack.server.url, timeout=30)
        assert resp.status_code < 500, (resp.status_code, resp.text[:500], case.body)
        if resp.status_code == 413:
            # A generated body over the server's --max-body-bytes: a documented rejection, but not one of the
            # statuses schemathesis' negative_data_rejection expects for schema violations.
            assert resp.json()["error"]["code"] == "body_too_large"
            return
        case.validate_response(resp, checks=checks)

    run()
