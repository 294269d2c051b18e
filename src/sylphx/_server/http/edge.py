"""The API's edge: every error becomes the documented error body here, once.

The error tree (:mod:`sylphx._core.errors`) names each status; infrastructure failures (an
unreachable store, a full disk, a concurrent write) become their sylphx errors; what
FastAPI and Starlette answer themselves (an unknown path, a wrong method, a body that
does not parse) is given the same shape. A request body is bounded
(:data:`~sylphx._core.limits.MAX_BODY_BYTES`) before any of it is parsed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sylphx._core.errors import (
    ConflictError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    SylphxError,
    Unauthorized,
    ValidationError,
)
from sylphx._core.limits import MAX_BODY_BYTES
from sylphx._core.spec import RunSpec
from sylphx._core.validation import validation_error
from sylphx._server.infra import faults
from sylphx._server.runs import longpoll

from .openapi import ROUTES

__all__ = ["BodyLimit", "ErrorResponse", "checked_hash", "error_response", "install"]

log = logging.getLogger("sylphx.api")


class ErrorResponse(JSONResponse):
    """An error body, JSON with non-ASCII escaped: whatever a rejected request held, the
    answer can always be encoded."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(err: SylphxError) -> ErrorResponse:
    """The response for ``err``: its status, its body and the headers it calls for."""
    headers = {}
    if isinstance(err, QuotaExceeded) and err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    if err.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return ErrorResponse(err.to_body(), status_code=err.status_code, headers=headers)


def _too_large() -> PayloadTooLarge:
    fix = "send a smaller body; large inputs belong in a volume or the working directory"
    return PayloadTooLarge(
        f"body: is over {MAX_BODY_BYTES:,} bytes. Fix: {fix}.",
        details=[{"field": "body", "rule": f"at most {MAX_BODY_BYTES:,} bytes", "fix": fix}],
    )


def _http_error(exc: HTTPException, allow: str = "") -> SylphxError:
    """What Starlette or FastAPI answered by itself, as a sylphx error."""
    if exc.status_code == 404:
        return NotFound("no such endpoint. Fix: see /docs for the API's paths.")
    if exc.status_code == 405:
        return MethodNotAllowed(
            f"this endpoint does not take that method. Fix: use one it takes ({allow}); see /docs."
        )
    if exc.status_code == 413:
        return _too_large()
    if exc.status_code == 400:  # FastAPI could not parse the body (e.g. nested too deep)
        fix = "send a JSON object (nested at most a few levels, as the spec is)"
        return ValidationError(
            f"body: is not JSON this API can read. Fix: {fix}.",
            details=[{"field": "body", "rule": "is not JSON this API can read", "fix": fix}],
        )
    err = SylphxError(str(exc.detail))
    err.status_code = exc.status_code  # type: ignore[misc]
    return err


def install(app: FastAPI, *, engine: Engine, home: Path) -> None:
    """Register the error handlers and the body limit on ``app``: an unreachable store is
    told about ``engine``'s, a full disk about the one of ``home`` (SYLPHX_HOME)."""
    app.add_middleware(BodyLimit)

    @app.exception_handler(SylphxError)
    async def _sylphx_error(_: Request, exc: SylphxError) -> ErrorResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _starlette_error(request: Request, exc: HTTPException) -> ErrorResponse:
        if exc.status_code != 405:
            return error_response(_http_error(exc))
        allow = _allowed(request.url.path) or (exc.headers or {}).get("Allow", "")
        out = error_response(_http_error(exc, allow))
        out.headers["Allow"] = allow  # every method the path takes (RFC 9110)
        return out

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _store_error(_: Request, exc: Exception) -> ErrorResponse:
        err = faults.store_unavailable(exc, engine)
        log.error("%s", err.message)
        return error_response(err)

    @app.exception_handler(OSError)
    async def _os_error(_: Request, exc: OSError) -> ErrorResponse:
        if not faults.is_disk_full(exc):
            raise exc
        err = faults.disk_full(home, "data")
        log.error("%s", err.message)
        return error_response(err)

    @app.exception_handler(StaleDataError)
    async def _conflict(_: Request, exc: StaleDataError) -> ErrorResponse:
        return error_response(
            ConflictError("the object changed while this request ran. Fix: retry the request.")
        )

    @app.exception_handler(RequestValidationError)
    async def _request_error(_: Request, exc: RequestValidationError) -> ErrorResponse:
        errors = list(exc.errors())
        return error_response(longpoll.wait_error(errors) or validation_error(errors, RunSpec))


def _allowed(path: str) -> str:
    """The methods the API takes at ``path``, from the route table the OpenAPI document is
    built from. (Starlette's own 405 names only those of the first route of the path: GET
    /v1/runs would hide POST /v1/runs.)"""
    methods = {method.upper() for method, pattern in _PATTERNS if pattern.fullmatch(path)}
    return ", ".join(sorted(methods))


_PATTERNS = [  # (method, the path template as a regex): {run_id} is one path segment
    (method, re.compile(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))))
    for method, template in ROUTES
]


_WRITES = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    """ASGI middleware: a request body over MAX_BODY_BYTES is a 413 in the error shape,
    told by its Content-Length before it is read, or as it streams in (chunked). And an
    API request with a body (``/v1/``, POST, PUT, PATCH) has its key checked before any
    of the body is read: parsing a 4 MiB body takes the event loop ~0.2 s, which nobody
    without a key may make it spend (found by an attack review). The route asks for the
    key's org again by the hash found then (:func:`checked_hash`), from the key cache."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = await _refused(scope)
        if refused is not None:
            await error_response(refused)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise HTTPException(413)  # FastAPI passes it on: see _http_error
            return message

        await self.app(scope, counted, send)


async def _refused(scope: Scope) -> SylphxError | None:
    """What a request is refused for before its body is read: a body too large by its
    Content-Length (413), an API write without a valid key (401)."""
    authorization = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                size = int(value)
            except ValueError:
                size = -1
            if size > MAX_BODY_BYTES or size < 0:
                return _too_large()
        elif name == b"authorization" and authorization is None:  # the first, as the route
            authorization = bytes(value).decode("latin-1")
    if scope["method"] in _WRITES and scope["path"].startswith("/v1/"):
        plane = scope["app"].state.plane
        try:
            key_hash = plane.account.key_hash(authorization)
            await plane.account.org_of_hash(key_hash)
        except Unauthorized as exc:
            return exc
        except (OperationalError, InterfaceError, PoolTimeout) as exc:  # (a 503, unread)
            return faults.store_unavailable(exc, plane.engine)
        scope.setdefault("state", {})[_CALLER] = (authorization, key_hash)
    return None


_CALLER = "sylphx.caller"  # the request's state: (Authorization, its key's hash) checked


def checked_hash(scope: Scope, authorization: str | None) -> str | None:
    """The hash of the key the edge checked for this request, if ``authorization`` is
    the header it read (the first, as the routes read it); None when it checked none.
    The route asks for the key's org again by it, through the key cache: a key revoked
    while its request's body was read is refused as at any other time (an attack
    review's find), and the key is not hashed twice."""
    checked = scope.get("state", {}).get(_CALLER)
    if checked is not None and checked[0] == authorization:
        return str(checked[1])
    return None
