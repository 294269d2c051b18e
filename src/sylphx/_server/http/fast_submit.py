"""``POST /v1/runs`` without FastAPI's per-request machinery, for the submits that need none.

FastAPI resolves a route's parameters and dependencies anew on every request (the body
model, the key header, the query, the caller's org, the service): ~0.3 ms of the event
loop's time a submit, a tenth of the server's work per single-shard run (P7, see
docs/adr/0010). This route goes in front of the FastAPI one and takes only the plain case:
no query string, a JSON content type, a body that parses and validates, an
``Idempotency-Key`` that is valid if there is one. It answers it with the same calls: the
caller's org from :meth:`AccountService.authenticate`, the spec by
``RunSpec.model_validate`` of the body's ``json.loads`` (as FastAPI validates a body
model), the submit by :meth:`RunService.submit`, their errors through the same handlers.
Anything else -- a query (``dryRun``), another content type, a body or key that does not
validate -- is handed to the FastAPI route with the body it read, so every refusal is
FastAPI's own, as documented; ``tests/test_fast_submit.py`` compares the two answers. A
new header or body rule on ``submit_run`` must be checked here too (a query need not).
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import StringConstraints, TypeAdapter
from pydantic import ValidationError as PydanticError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from sylphx._core.limits import Text
from sylphx._core.spec import RunSpec

from .deps import plane_of
from .edge import checked_hash

__all__ = ["install"]

_KEY = TypeAdapter(Annotated[Text, StringConstraints(min_length=1, max_length=255)])
_JSON = (b"application/json", b"application/json; charset=utf-8")


def install(app: FastAPI) -> None:
    """Put the plain submit's route in front of ``app``'s ``POST /v1/runs``."""
    full = next(
        r
        for r in app.router.routes
        if isinstance(r, APIRoute) and r.path == "/v1/runs" and "POST" in (r.methods or ())
    )
    app.router.routes.insert(0, _Route("/v1/runs", PlainSubmit(full), methods=["POST"]))


class _Route(Route):
    """A route that names itself on the scope it matches, as FastAPI's routes do: the
    request metrics label a request by its route's template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


class PlainSubmit:
    """The ASGI app of the plain submit (see the module); ``full`` takes the rest, in the
    order FastAPI's route checks a submit: the body's JSON, the caller's key, the spec
    and the ``Idempotency-Key``."""

    def __init__(self, full: APIRoute) -> None:
        self.full = full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["query_string"] or _content_type(scope) not in _JSON:
            await self.full.handle(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            body = await request.body()
            document = json.loads(body)
        except ClientDisconnect:  # gone mid-body: as FastAPI answers that (nobody reads it)
            await self.full.handle(scope, _replay(b"", receive, gone=True), send)
            return
        except (ValueError, RecursionError):  # not JSON; nested too deep
            await self.full.handle(scope, _replay(body, receive), send)
            return
        plane = plane_of(request)
        authorization = request.headers.get("authorization")
        key_hash = checked_hash(scope, authorization)  # (hashed at the edge: see BodyLimit)
        if key_hash is not None:
            org_id = await plane.account.org_of_hash(key_hash)
        else:
            org_id = await plane.account.authenticate(authorization)
        try:
            spec = RunSpec.model_validate(document)
            key = request.headers.get("idempotency-key")
            if key is not None:
                key = _KEY.validate_python(key)
        except PydanticError:
            await self.full.handle(scope, _replay(body, receive), send)  # FastAPI's 422
            return
        answer = await plane.runs.submit(spec, org_id, key)
        response = Response(answer, status_code=201, media_type="application/json")
        await response(scope, receive, send)


def _content_type(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).lower()
    return b""


def _replay(body: bytes, receive: Receive, *, gone: bool = False) -> Receive:
    """A ``receive`` that gives ``body`` again (it was read already), then is the
    connection's own again (a disconnect is seen when it happens); ``gone``: the client
    left mid-body, which is all it says."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if gone:
            return {"type": "http.disconnect"}
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
