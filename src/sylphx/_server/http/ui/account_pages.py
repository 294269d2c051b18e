"""The usage page (compute-seconds by day and tier as a chart, credits, billable) and the
org page (plan, concurrent shards against the budget, volumes, keys: names and dates,
never values), over the AccountService and the VolumeService."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from sylphx._core.views import UsageReport
from sylphx._server.plane import ControlPlane

from . import model
from .web import UIRoute, Viewer, page, plane_of

__all__ = ["router"]

router = APIRouter(route_class=UIRoute, include_in_schema=False)
CHART_DAYS = 14


def _days(plane: ControlPlane, org_id: str) -> list[tuple[datetime, UsageReport]]:
    """The usage report of each of the last ``CHART_DAYS`` UTC days (whole days are read
    from the daily sums: a few cheap queries each)."""
    windows = model.day_windows(plane.now(), CHART_DAYS)
    return [(start, plane.account.usage(org_id, start, end)) for start, end in windows]


@router.get("/ui/usage")
async def usage_page(request: Request, me: Viewer) -> HTMLResponse:
    """This month's usage (credits applied, billable) and the last days as a chart."""
    plane = plane_of(request)
    month = await run_in_threadpool(plane.account.usage, me.org_id, None, None)
    days = await run_in_threadpool(_days, plane, me.org_id)
    return page("usage.html", request, me, report=month, chart=model.usage_chart(days))


@router.get("/ui/org")
async def org_page(request: Request, me: Viewer) -> HTMLResponse:
    """The org: its plan, the concurrent shards in use against the budget, volumes, keys."""
    plane = plane_of(request)
    org = await run_in_threadpool(plane.account.org, me.org_id)
    volumes = await run_in_threadpool(plane.volumes.list_all, me.org_id)
    keys = await run_in_threadpool(plane.account.list_keys, me.org_id)  # never the key
    used = org.shards_in_use / org.concurrent_shards if org.concurrent_shards else 0.0
    return page("org.html", request, me, org=org, volumes=volumes, keys=keys, used=used)
