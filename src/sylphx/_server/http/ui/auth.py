"""``/ui`` itself, signing in and out, and the static assets (shipped in the wheel: CSS,
a few plain ES modules, and the state colours as CSS from the one palette)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from sylphx._core.errors import NotFound, Unauthorized
from sylphx._core.palette import STATE_COLORS

from . import session
from .model import TIER_COLORS
from .web import HERE, UIRoute, Viewer, form_of, page, plane_of, sign_outs_of, signer_of

__all__ = ["fallback", "router"]

router = APIRouter(route_class=UIRoute, include_in_schema=False)
fallback = APIRouter(route_class=UIRoute, include_in_schema=False)  # installed last

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
STATIC = {
    p.name: (p.read_bytes(), _TYPES[p.suffix])
    for p in (HERE / "static").iterdir()
    if p.suffix in _TYPES
}


def _palette_css() -> bytes:
    """A class per state (``s-failed``...) and its colour: the one palette, as CSS."""
    lines = [f".s-{state}{{--c:{color}}}" for state, color in STATE_COLORS.items()]
    lines += [f".t{k}{{--c:{color}}}" for k, color in enumerate(TIER_COLORS)]
    return ("\n".join(lines) + "\n").encode()


STATIC["palette.css"] = (_palette_css(), _TYPES[".css"])


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    """One of the dashboard's assets (a fixed set, read once)."""
    found = STATIC.get(name)
    if found is None:
        raise NotFound(f"no asset {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/ui")
@router.get("/ui/")
def home() -> Response:
    """The runs list."""
    return RedirectResponse("/ui/runs", status_code=303)


def _next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("/ui//"):
        return value
    return "/ui/runs"


def _login_page(request: Request, target: str, status: int, error: str | None) -> HTMLResponse:
    signer = signer_of(request)
    nonce, token = signer.login_token(request)
    out = page("login.html", request, None, status, login_token=token, next=target, error=error)
    signer.remember_login(out, request, nonce)
    return out


@router.get("/ui/login")
def login_form(
    request: Request, next_: Annotated[str | None, Query(alias="next", max_length=512)] = None
) -> HTMLResponse:
    """The sign-in form: an API key."""
    return _login_page(request, _next(next_), 200, None)


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Check the key as the API does; a session cookie, then the page asked for."""
    form = await form_of(request)
    signer = signer_of(request)
    target = _next(form.get("next"))
    if not session.same_origin(request) or not signer.login_ok(request, form.get("csrf", "")):
        return page("error.html", request, None, 403, title="forbidden", message=_STALE)
    try:
        key_id, org_id = await session.key_of(plane_of(request).account, form.get("key", ""))
    except Unauthorized:
        return _login_page(request, target, 401, "That key is unknown or revoked.")
    out = RedirectResponse(target, status_code=303)
    signer.issue(out, request, org_id, key_id)
    return out


_STALE = "The form was stale or came from another site (CSRF check). Reload it and try again."


@router.post("/ui/logout")
async def logout(request: Request, me: Viewer) -> Response:
    """End the session in the store (a copy of its cookie is no session either, in any
    worker) and drop its cookie; CSRF-checked like every POST."""
    form = await form_of(request)
    if not session.csrf_ok(request, me, form.get("csrf", "")):
        return page("error.html", request, me, 403, title="forbidden", message=_STALE)
    expires = datetime.fromtimestamp(me.expires, UTC)
    await run_in_threadpool(sign_outs_of(request).end, me.nonce, expires)
    out = RedirectResponse("/ui/login", status_code=303)
    session.clear(out)
    return out


@fallback.get("/ui/{rest:path}")
def unknown(request: Request, rest: str) -> Response:
    """Any other path under /ui: a 404 page (with the headers), not the API's JSON."""
    raise NotFound(f"no dashboard page /ui/{rest}")
