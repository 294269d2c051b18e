"""``GET /metrics`` (Prometheus text format) and the API's request metrics.

What one scrape shows: the store's levels (:class:`~sylphx._server.runs.gauges.StoreGauges`,
read at the scrape, the same from any process), the reconciler's events
(``controller/telemetry.py``: counted by the lease holder) and every request's duration
by method, route template and status (:class:`RequestMetrics`).

With ``--workers N`` each API process counts its own requests, and only one reconciles; a
scrape lands on any one of them. So the processes keep their metrics in prometheus-client's
multiprocess mode: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory of
the home before the workers start (``sylphx._server.metrics_dir``), each process writes its
values to its own memory-mapped files there, and a scrape sums them all. A process that
exits leaves its counts in (counters never go back). One process (the default) keeps them
in memory and also serves the process and Python collectors.

Who may read it: the per-org series are operator data. With ``SYLPHX_METRICS_TOKEN`` set,
only a request with ``Authorization: Bearer <that token>`` (an API key never opens it);
unset, only a loopback client (or the Unix socket), and not through a proxy that says
it forwarded the request. Anything else is a 401.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sylphx._core.errors import Unauthorized
from sylphx._server.runs.gauges import StoreGauges

__all__ = ["MULTIPROC_ENV", "REQUESTS", "RequestMetrics", "install", "process_exit"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # type: ignore[no-untyped-call]  # no x_created beside each counter
REQUESTS = Histogram(
    "sylphx_http_request_duration_seconds",
    "API requests by method, route template and status: from the request until the last"
    " byte of the response (a long-poll or a followed log counts its whole wait).",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route of a request no route took (404): one label, not its path
_FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


class RequestMetrics:
    """ASGI middleware: each HTTP request's duration into :data:`REQUESTS`, labelled by
    the route's template (``/v1/runs/{run_id}``, never the path: bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series: dict[tuple[str, str, str], Histogram] = {}  # labels() once per series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what an error that escapes every handler becomes

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")  # set by the router on the scope it was given
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (method, template, str(status))
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = REQUESTS.labels(*key)
            series.observe(time.perf_counter() - began)


class _Exposition:
    """One scrape's collectors: this process's metrics (or, multiprocess, every process's
    from their files) and the store's levels."""

    def __init__(self, store: StoreGauges) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        path = os.environ.get(MULTIPROC_ENV)
        if path:  # (multiprocess is untyped)
            every = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
            yield from every.collect()  # type: ignore[no-untyped-call]
        else:
            yield from REGISTRY.collect()
        yield from self.store.collect()


def install(
    app: FastAPI,
    *,
    reads: sessionmaker[Session],
    now: Callable[[], datetime],
    token: str | None,
) -> None:
    """Time every request of ``app`` and serve ``GET /metrics`` (store levels read with
    ``reads``), guarded by ``token`` (``SYLPHX_METRICS_TOKEN``) as described above."""
    app.add_middleware(RequestMetrics)
    exposition = _Exposition(StoreGauges(reads, now))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:  # sync: the store is read in the thread pool
        """Prometheus metrics (text format 0.0.4); an operator's, not a tenant's."""
        authorize(request, token)
        return Response(generate_latest(exposition), media_type=CONTENT_TYPE_LATEST)


def authorize(request: Request, token: str | None) -> None:
    """Let the request read /metrics, or raise :class:`Unauthorized` saying how to."""
    if token is not None:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise Unauthorized(
                "/metrics needs the metrics token (an API key does not open it). Fix: send"
                " Authorization: Bearer <SYLPHX_METRICS_TOKEN>."
            )
        return
    if not _loopback(request.scope):
        raise Unauthorized(
            "/metrics answers only loopback clients while SYLPHX_METRICS_TOKEN is unset."
            " Fix: set SYLPHX_METRICS_TOKEN on the server and scrape with it as a bearer"
            " token (Prometheus: authorization.credentials)."
        )


def _loopback(scope: Scope) -> bool:
    """A client on this host that no proxy forwarded: loopback, or the Unix socket."""
    if any(name in _FORWARDED for name, _ in scope.get("headers", ())):
        return False
    client = scope.get("client")
    if client is None:  # a Unix socket: its file's permissions decide who connects
        return True
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def process_exit() -> None:
    """This process is ending: drop its live-gauge files (multiprocess mode's bookkeeping;
    its counters and histograms stay counted)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
