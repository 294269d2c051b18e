"""The OpenAPI document, true to what the API answers (checked by tests/test_api_fuzz.py).

FastAPI documents each route's success and a 422 in its own (unused) shape. Everything
else is added here from one table, :data:`ROUTES`: every error status each endpoint can
answer, all in the one error body (:class:`~sylphx._core.views.ErrorBody`), the bearer key as a
security scheme (not a header parameter), the logs as ``text/plain`` (every shard's as
NDJSON, each line a ``LogChunk``) and a secret's ``200 replaced``. A route missing from
the table, or a table row without a route, fails the document's build, so the two cannot
drift apart.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sylphx._core.views import ErrorBody, LogChunk, SecretView

__all__ = ["ERRORS", "ROUTES", "document", "install"]

# What each error status means, once; the body is always an ErrorBody.
ERRORS: dict[int, str] = {
    401: "No API key, or an unknown or revoked one (`unauthorized`).",
    402: "The org reached its monthly spend limit (`spend_limit_reached`): new runs wait"
    " for the month to end or a higher limit; running runs finish.",
    404: "No such object, or another org's (`not_found`).",
    409: "The object's state forbids it (`conflict`, `illegal_transition`): e.g. a run that"
    " has not ended, a volume in use, or a concurrent change.",
    413: "The body is over 4 MiB (`payload_too_large`).",
    422: "A broken rule (`validation_error`; a run that could never be scheduled:"
    " `unschedulable`); `details` names each field, rule and fix.",
    429: "Over a plan budget, or (a followed log) the open log streams' cap"
    " (`quota_exceeded`); `Retry-After` when waiting helps.",
    503: "The store, a disk or the executor is unavailable, or the control plane is shutting"
    " down (`store_unavailable`, `storage_full`, `executor_error`, `server_unavailable`).",
}
KEYED = (401, 503)  # every endpoint that needs a key: no (valid) key, no store

# (method, path) -> (needs a key, the errors beyond KEYED it can answer)
ROUTES: dict[tuple[str, str], tuple[bool, tuple[int, ...]]] = {
    ("get", "/healthz"): (False, ()),
    ("get", "/readyz"): (False, (503,)),
    ("get", "/v1/org"): (True, ()),
    # 404: a volume or secret it names; 409: an Idempotency-Key reused with another spec
    ("post", "/v1/runs"): (True, (402, 404, 409, 413, 429)),
    ("get", "/v1/runs"): (True, ()),
    ("get", "/v1/runs/{run_id}"): (True, (404,)),
    ("delete", "/v1/runs/{run_id}"): (True, (404, 409)),
    ("get", "/v1/runs/{run_id}/shards"): (True, (404,)),
    ("post", "/v1/runs/{run_id}/cancel"): (True, (404, 409)),
    # 404: a volume the run mounts was deleted; 409: not ended, an index succeeded
    ("post", "/v1/runs/{run_id}/retry"): (True, (402, 404, 409, 413, 429)),
    # 429: follow=true with the org's (or this process's) followed log streams all open
    ("get", "/v1/runs/{run_id}/logs"): (True, (404, 429)),
    ("post", "/v1/volumes"): (True, (413,)),
    ("get", "/v1/volumes"): (True, ()),
    ("delete", "/v1/volumes/{volume_id}"): (True, (404, 409)),
    ("post", "/v1/secrets"): (True, (413,)),
    ("get", "/v1/secrets"): (True, ()),
    ("delete", "/v1/secrets/{name}"): (True, (404,)),
    ("get", "/v1/usage"): (True, ()),
}
TEXT_PLAIN = {("get", "/v1/runs/{run_id}/logs")}  # 200 is the log itself, not JSON
# ... and with all=true (or indices) every shard's log: one LogChunk per line (NDJSON)
NDJSON = {("get", "/v1/runs/{run_id}/logs"): "LogChunk"}
REF = "#/components/schemas/{model}"


def install(app: FastAPI) -> None:
    """Serve :func:`document` as ``app``'s OpenAPI document (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for ``app``, completed from :data:`ROUTES`."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, never sent
        schemas.pop(name, None)
    body = ErrorBody.model_json_schema(ref_template=REF)
    schemas.update(body.pop("$defs", {}))
    schemas["ErrorBody"] = body
    for model in (SecretView, LogChunk):
        if model.__name__ not in schemas:
            schemas[model.__name__] = model.model_json_schema(ref_template=REF)
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"}
    }
    seen = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if (method, path) not in ROUTES:
                raise RuntimeError(f"{method.upper()} {path}: add it to openapi.ROUTES")
            seen.add((method, path))
            _complete(method, path, op)
    if missing := set(ROUTES) - seen:
        raise RuntimeError(f"openapi.ROUTES names routes the app lacks: {sorted(missing)}")
    return doc


def _complete(method: str, path: str, op: dict[str, Any]) -> None:
    keyed, extra = ROUTES[(method, path)]
    responses: dict[str, Any] = op["responses"]
    codes = set(extra)
    if keyed:
        codes |= set(KEYED)
        op["security"] = [{"bearer": []}]
        op["parameters"] = [
            p
            for p in op.get("parameters", [])
            if not (p["in"] == "header" and p["name"].lower() == "authorization")
        ]
        if not op["parameters"]:
            del op["parameters"]
    if any(p["in"] in ("path", "query") for p in op.get("parameters", [])) or ("requestBody" in op):
        codes.add(422)  # a parameter or body that breaks a rule
    elif "422" in responses and 422 not in codes:
        del responses["422"]
    for code in sorted(codes):
        responses[str(code)] = _error(code)
    if (method, path) in TEXT_PLAIN:
        responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    if (method, path) in NDJSON:  # the schema of each line
        each = {"schema": {"$ref": REF.format(model=NDJSON[(method, path)])}}
        responses["200"]["content"]["application/x-ndjson"] = each
    if (method, path) == ("post", "/v1/secrets"):
        view = {"application/json": {"schema": {"$ref": REF.format(model="SecretView")}}}
        responses["200"] = {"description": "Replaced an existing secret", "content": view}
    op["responses"] = dict(sorted(responses.items()))


def _error(code: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": ERRORS[code],
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }
    if code == 401:
        out["headers"] = {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}
        }
    if code == 429:
        out["headers"] = {
            "Retry-After": {
                "required": False,
                "description": "seconds after which the request would likely fit",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return out
