"""The OpenAPI document says what the API answers (issue #17, item 7): every status, the
one error body, the bearer key, the logs' text/plain; a method an endpoint does not take
is a 405 naming the ones it does. (tests/test_api_fuzz.py checks the answers themselves.)"""

from __future__ import annotations

from typing import Any

import httpx

from conftest import Server
from sylphx._server.http import openapi

ERROR_REF = "#/components/schemas/ErrorBody"


def _doc(server: Server) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/openapi.json")  # no key needed
    assert r.status_code == 200
    return dict(r.json())


def _ops(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, path): op for path, ops in doc["paths"].items() for m, op in ops.items()}


def test_every_operation_documents_its_errors_in_the_one_error_body(shared_server: Server) -> None:
    doc = _doc(shared_server)
    ops = _ops(doc)
    assert set(ops) == set(openapi.ROUTES)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["error", "message"]
    assert schemas["ErrorDetail"]["required"] == ["field", "rule", "fix"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), op in ops.items():
        keyed, extra = openapi.ROUTES[(method, path)]
        codes = {int(c) for c in op["responses"]}
        assert set(extra) <= codes, (method, path)
        if keyed:
            assert op["security"] == [{"bearer": []}], (method, path)
            assert {401, 503} <= codes, (method, path)
            names = [p["name"].lower() for p in op.get("parameters", [])]
            assert "authorization" not in names  # the key is the security scheme
        else:
            assert "security" not in op and 401 not in codes, (method, path)
        for code, response in op["responses"].items():
            if int(code) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (method, path, code)


def test_the_statuses_the_issue_names(shared_server: Server) -> None:
    ops = _ops(_doc(shared_server))

    def codes(method: str, path: str) -> set[str]:
        return set(ops[(method, path)]["responses"])

    assert codes("delete", "/v1/runs/{run_id}") == {"204", "401", "404", "409", "422", "503"}
    assert {"201", "404", "409", "413", "422", "429", "503"} <= codes("post", "/v1/runs")
    assert {"200", "201", "413", "422"} <= codes("post", "/v1/secrets")  # replaced, created
    for method, path in ops:
        if "{" in path:
            assert "404" in codes(method, path) and "422" in codes(method, path), path
    assert codes("get", "/healthz") == {"200"}
    assert codes("get", "/readyz") == {"200", "503"}
    logs = ops[("get", "/v1/runs/{run_id}/logs")]["responses"]["200"]["content"]
    assert logs == {
        "text/plain": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/LogChunk"}},  # all=true
    }
    too_many = ops[("post", "/v1/runs")]["responses"]["429"]
    assert "Retry-After" in too_many["headers"]


def test_a_method_an_endpoint_does_not_take_is_a_405_naming_those_it_does(
    shared_server: Server,
) -> None:
    ops = _ops(_doc(shared_server))
    for path in {path for _, path in ops}:
        takes = {m.upper() for m, p in ops if p == path}
        concrete = path.replace("{run_id}", "x").replace("{volume_id}", "x")
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - takes:
            r = shared_server.http.request(method, concrete.replace("{name}", "x"))
            assert r.status_code == 405, (method, path, r.text)
            allow = set(r.headers["allow"].replace(" ", "").split(","))
            assert allow == takes, (path, allow)
            body = r.json()
            assert body["error"] == "method_not_allowed"
            assert all(m in body["message"] for m in takes)
