"""The API app: the plane's lifespan, the edge (errors, body limit), health, the
routers per resource and the completed OpenAPI document.

This is where the HTTP edge meets the control plane, once: the routers reach the
services the plane built through :mod:`.deps`; the edge and the health checks are given
the parts they watch (the store's engine, the executor, the lease, the disks), and the
metrics the store they read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from sylphx._server.plane import ControlPlane

from . import account, edge, fast_submit, health, metrics, openapi, runs, secrets, ui, volumes

__all__ = ["create_app"]


def create_app(plane: ControlPlane, *, embedded: bool = False) -> FastAPI:
    """The API app around ``plane``; the app's lifespan starts and stops the plane.
    ``embedded``: the local default, which creates its ``local`` org and key on start."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        plane.start()
        if embedded:
            plane.bootstrap_local()
        try:
            yield
        finally:
            plane.stop()
            metrics.process_exit()

    app = FastAPI(title="sylphx", version=version("sylphx"), lifespan=lifespan)
    app.state.plane = plane
    # errors mapped to HTTP once; the body limit
    edge.install(app, engine=plane.engine, home=plane.settings.home)
    # every request timed (outermost but for /ui's headers: a 413 counts too); GET /metrics
    metrics.install(app, reads=plane.reads, now=plane.now, token=plane.settings.metrics_token)
    health.install(  # /healthz, /readyz
        app,
        engine=plane.engine,
        executor=plane.executor,
        logs_dir=plane.settings.logs_dir,
        lease=plane.reconciler.lease,
        reconcile_interval=plane.settings.reconcile_interval,
        draining=plane.is_draining,
    )
    # The routes go straight into the app's table, the polled run first: an included
    # router is a routing layer of its own in this FastAPI, ~40 us more per request (P3).
    for router in (runs.router, volumes.router, secrets.router, account.router):
        app.router.routes.extend(router.routes)
    fast_submit.install(app)  # a plain submit without FastAPI's per-request work (ADR 0010)
    ui.install(app)  # the web dashboard under /ui (not in the OpenAPI document)
    openapi.install(app)  # the document, completed: every status, the one error body
    return app
