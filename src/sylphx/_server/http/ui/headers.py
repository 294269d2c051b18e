"""The security headers on every answer under ``/ui``, whoever made it: the dashboard's
routes add them (:class:`.web.UIRoute`), and so does this middleware for what the app
answers by itself there (a wrong method, a body over the limit, a failure outside a
route), with a plain page of its own when a failure escaped before any answer began."""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .web import SECURITY_HEADERS

__all__ = ["SecurityHeaders"]

log = logging.getLogger("sylphx.ui")
_FAILED = b"Something went wrong on the server. Try again; if it persists, tell its operator."


def _under_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response to a ``/ui`` path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _under_ui(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise
            log.exception("dashboard: %s %s failed", scope.get("method"), scope.get("path"))
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": _FAILED})
