"""What every dashboard route shares: the templates (Jinja2, autoescaped), the security
headers, the signed-in viewer, and one route class that turns a missing session into the
sign-in page, an error into a page (another org's run is a 404 like an unknown one) and
adds the headers to every answer."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from sylphx._core.errors import QuotaExceeded, SylphxError, Unauthorized, ValidationError
from sylphx._core.gantt import fmt_seconds
from sylphx._core.palette import SHARD_GLYPHS
from sylphx._server.http.deps import plane_of
from sylphx._server.runs.account import SignOuts

from . import session
from .session import Session, Signer

__all__ = [
    "CSP",
    "HERE",
    "SECURITY_HEADERS",
    "UIRoute",
    "Viewer",
    "form_of",
    "page",
    "plane_of",
    "render",
    "sign_outs_of",
    "signer_of",
]

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 16 * 1024
log = logging.getLogger("sylphx.ui")


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is text: a <script> in a command is shown, not run
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["secs"] = fmt_seconds
    env.filters["when"] = _when
    env.filters["num"] = lambda v: f"{v:,.1f}"
    env.globals["glyphs"] = SHARD_GLYPHS
    return env


TEMPLATES = _env()


class SignIn(Exception):
    """No valid session: the sign-in page, then back to ``next``."""


def signer_of(request: Request) -> Signer:
    """The home's cookie signer (made once per app)."""
    signer: Signer | None = getattr(request.app.state, "ui_signer", None)
    if signer is None:
        signer = request.app.state.ui_signer = Signer(plane_of(request).settings.home)
    return signer


def sign_outs_of(request: Request) -> SignOuts:
    """The store's signed-out sessions (made once per app, over the plane's sessions)."""
    found: SignOuts | None = getattr(request.app.state, "ui_sign_outs", None)
    if found is None:
        plane = plane_of(request)
        found = SignOuts(sessions=plane.sessions, reads=plane.reads, now=plane.now)
        request.app.state.ui_sign_outs = found
    return found


async def viewer(request: Request) -> Session:
    """The signed-in session with a live key, not signed out, or the sign-in page."""
    found = signer_of(request).session(request)
    if found is None:
        raise SignIn
    if await run_in_threadpool(sign_outs_of(request).ended, found.nonce):
        raise SignIn
    try:
        org_id = await session.key_org(plane_of(request).account, found.key_id)
    except Unauthorized:
        raise SignIn from None
    if org_id != found.org_id:
        raise SignIn
    return found


Viewer = Annotated[Session, Depends(viewer)]


def render(name: str, **context: Any) -> str:
    """A template rendered with ``context``."""
    return TEMPLATES.get_template(name).render(**context)


def page(
    name: str, request: Request, me: Session | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A full page: the template ``name`` in the layout, with the viewer's CSRF token."""
    html = render(name, me=me, csrf=me.csrf if me else "", path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code)


async def form_of(request: Request) -> Mapping[str, str]:
    """An urlencoded form body (bounded), first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _error_page(request: Request, exc: SylphxError) -> HTMLResponse:
    me = signer_of(request).session(request)
    out = page("error.html", request, me, exc.status_code, title=exc.code, message=exc.message)
    if isinstance(exc, QuotaExceeded) and exc.retry_after is not None:
        out.headers["Retry-After"] = str(exc.retry_after)
    return out


def _failed(request: Request) -> HTMLResponse:
    """The page of an unexpected failure (its cause is in the server's log only)."""
    message = "Something went wrong on the server. Try again; if it persists, tell its operator."
    try:
        return page("error.html", request, None, 500, title="internal", message=message)
    except Exception:  # the page itself failed: plain text
        return HTMLResponse(message, status_code=500)


def _sign_in(request: Request) -> Response:
    next_ = request.url.path if request.method == "GET" else "/ui/runs"
    query = urllib.parse.urlencode({"next": next_})
    return RedirectResponse(f"/ui/login?{query}", status_code=303)


class UIRoute(APIRoute):
    """A dashboard route: sign-in redirects, error pages, the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignIn:
                response = _sign_in(request)
            except SylphxError as exc:
                response = _error_page(request, exc)
            except RequestValidationError as exc:
                said = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
                response = _error_page(request, ValidationError(said))
            except Exception:  # a page, with the headers, never a bare 500
                log.exception("dashboard: %s %s failed", request.method, request.url.path)
                response = _failed(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return run
