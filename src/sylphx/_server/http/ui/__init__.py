"""The web dashboard under ``/ui``: server-rendered pages (Jinja2, autoescaped) over the
same services as the API, a few plain ES modules for what refreshes live, no build step.
Signed in with an API key (a signed, HttpOnly, SameSite=Strict session cookie), every
POST CSRF-checked, every answer with a strict Content-Security-Policy: see
:mod:`.session` and :mod:`.web`."""

from __future__ import annotations

from fastapi import FastAPI

from . import account_pages, auth, runs_pages, shard_page
from .headers import SecurityHeaders

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Add the dashboard's routes to ``app`` (none of them in the OpenAPI document), and
    the security headers to every answer under /ui (the middleware added last: the
    outermost, so a 413 or a 405 gets them too)."""
    routers = (auth.router, runs_pages.router, shard_page.router, account_pages.router)
    for router in (*routers, auth.fallback):  # the fallback (any other /ui path) last
        app.router.routes.extend(router.routes)
    app.add_middleware(SecurityHeaders)
