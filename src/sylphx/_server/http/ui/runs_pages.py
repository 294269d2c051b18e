"""The runs list and a run's page: the header, the shard grid, the failure groups, the
timeline; what refreshes them while the run is active (a long-poll of small JSON, and
fragments: the page is never reloaded); cancel and retry, each behind a confirmation page
and a CSRF-checked POST. Every read goes through the RunService, scoped by the session's
org: another org's run is a 404 like an unknown one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from sylphx._core import limits
from sylphx._core.retry import RetryRequest
from sylphx._core.states import RunState
from sylphx._core.views import RunView, ShardView
from sylphx._server.http.deps import RunId
from sylphx._server.plane import ControlPlane
from sylphx._server.runs.live import MAX_LIVE_WAIT

from . import model, session
from .session import Session
from .web import UIRoute, Viewer, form_of, page, plane_of, render

__all__ = ["router"]

router = APIRouter(route_class=UIRoute, include_in_schema=False)
PAGE = 50
SEARCH_DEPTH = 500  # a search looks through the org's newest runs, this many at most
STATUSES = [s.value for s in RunState]


async def _runs(
    plane: ControlPlane, org_id: str, status: str | None, q: str, cursor: str | None
) -> tuple[list[RunView], str | None]:
    """A page of the org's runs, newest first; with ``q``, those of the newest
    ``SEARCH_DEPTH`` whose id or command contains it."""
    state = RunState(status) if status in STATUSES else None
    cursor = cursor or None  # the form sends an empty one
    if not q:
        got = await run_in_threadpool(
            plane.runs.list_runs, org_id, status=state, limit=PAGE, cursor=cursor
        )
        return got.items, got.next_cursor
    needle, found, seen, after = q.lower(), [], 0, None
    while seen < SEARCH_DEPTH:
        got = await run_in_threadpool(
            plane.runs.list_runs, org_id, status=state, limit=200, cursor=after
        )
        seen += len(got.items)
        found += [r for r in got.items if needle in r.id.lower() or needle in _cmd(r).lower()]
        after = got.next_cursor
        if after is None:
            break
    return found[:PAGE], None


def _cmd(run: RunView) -> str:
    return " ".join(run.spec.command or [])


def _rows(runs: list[RunView]) -> list[dict[str, object]]:
    return [
        {
            "id": r.id,
            "status": r.status.value,
            "command": _cmd(r),
            "agg": r.aggregate,
            "created_at": r.created_at,
            "machine": r.spec.machine,
        }
        for r in runs
    ]


Status = Annotated[str | None, Query(max_length=20)]
Search = Annotated[str, Query(max_length=200)]
Cursor = Annotated[str | None, Query(max_length=limits.MAX_ID_BYTES)]


@router.get("/ui/runs")
async def runs_page(
    request: Request, me: Viewer, status: Status = None, q: Search = "", cursor: Cursor = None
) -> HTMLResponse:
    """The org's runs, newest first: filter by status, search by id and command."""
    runs, next_cursor = await _runs(plane_of(request), me.org_id, status, q, cursor)
    return page(
        "runs.html",
        request,
        me,
        rows=_rows(runs),
        statuses=STATUSES,
        status=status or "",
        q=q,
        next_cursor=next_cursor,
        cursor=cursor or "",
    )


@router.get("/ui/runs/rows")
async def runs_rows(
    request: Request, me: Viewer, status: Status = None, q: Search = "", cursor: Cursor = None
) -> HTMLResponse:
    """The list's rows alone: what its page refreshes every few seconds."""
    runs, _ = await _runs(plane_of(request), me.org_id, status, q, cursor)
    return HTMLResponse(render("runs_rows.html", rows=_rows(runs)))


async def _load(request: Request, run_id: str, org_id: str) -> tuple[RunView, list[ShardView]]:
    """The run (the API's read path, its caches included: NotFound for another org's)
    and its shards with their attempts."""
    runs = plane_of(request).runs
    run = RunView.model_validate_json(await runs.get(run_id, org_id))
    shards = await run_in_threadpool(runs.grid, run_id, org_id, history=True)
    return run, shards


def _can_retry(run: RunView) -> bool:
    agg = run.aggregate
    return run.status.terminal and (agg.failed + agg.timed_out + agg.cancelled) > 0


@router.get("/ui/runs/{run_id}")
async def run_page(request: Request, me: Viewer, run_id: RunId) -> HTMLResponse:
    """A run: header, shard grid, failure groups, timeline; live while it is active."""
    # its live version read first: a change while the rest is read makes the first update
    version = await plane_of(request).runs.live(run_id, me.org_id, None, wait=0)
    run, shards = await _load(request, run_id, me.org_id)
    now = plane_of(request).now()
    return page(
        "run.html",
        request,
        me,
        run=run,
        version=version,
        command=_cmd(run),
        head=model.header(run, now),
        cells=[(s.index, *model.cell(s)) for s in shards],
        chart=model.timeline(shards, run.merge, run.started_at, now),
        can_retry=_can_retry(run),
    )


Version = Annotated[str | None, Query(max_length=64)]
Wait = Annotated[float, Query(ge=0, le=MAX_LIVE_WAIT)]


@router.get("/ui/runs/{run_id}/live")
async def run_live(
    request: Request, me: Viewer, run_id: RunId, version: Version = None, wait: Wait = 0
) -> Response:
    """One live update: the header (HTML), every cell's state, glyph and hover text, and
    the run's live version. Given the ``version`` the page has, a long-poll: the update as
    soon as the run changes (at once if it has), else ``{"changed": false}`` after
    ``wait`` seconds (the page asks for 25, then again). See runs/live.py."""
    plane = plane_of(request)
    runs = plane.runs
    now = await runs.live(run_id, me.org_id, version, wait=wait, receive=request.receive)
    if now == version:
        return JSONResponse({"changed": False, "version": now})
    run = RunView.model_validate_json(await runs.get(run_id, me.org_id))  # a 404 if deleted
    shards = await run_in_threadpool(runs.grid, run_id, me.org_id, history=False)
    head = model.header(run, plane.now())
    body = {
        "changed": True,
        "version": now,
        "status": run.status.value,
        "active": head["active"],
        "header": render("run_header.html", head=head),
        "cells": [model.cell(s) for s in shards],
        "canRetry": _can_retry(run),
    }
    return JSONResponse(body)


@router.get("/ui/runs/{run_id}/details")
async def run_details(request: Request, me: Viewer, run_id: RunId) -> HTMLResponse:
    """The failure groups and the timeline, as a fragment (refreshed while active)."""
    run, shards = await _load(request, run_id, me.org_id)
    chart = model.timeline(shards, run.merge, run.started_at, plane_of(request).now())
    return HTMLResponse(render("run_details.html", run=run, chart=chart))


_ACTIONS = {
    "cancel": ("Cancel this run?", "Its running shards get SIGTERM, then SIGKILL.", "Cancel run"),
    "retry": (
        "Retry the failed shards?",
        "Every index that ended failed, timed_out or cancelled runs again, in this run.",
        "Retry failed shards",
    ),
}


@router.get("/ui/runs/{run_id}/{action}")
async def confirm_page(request: Request, me: Viewer, run_id: RunId, action: str) -> HTMLResponse:
    """Confirm a cancel or a retry: the page whose form POSTs it."""
    if action not in _ACTIONS:
        return page("error.html", request, me, 404, title="not_found", message="no such page")
    run = RunView.model_validate_json(await plane_of(request).runs.get(run_id, me.org_id))
    question, detail, button = _ACTIONS[action]
    return page(
        "confirm.html",
        request,
        me,
        run=run,
        action=action,
        question=question,
        detail=detail,
        button=button,
    )


@router.post("/ui/runs/{run_id}/{action}")
async def act(request: Request, me: Viewer, run_id: RunId, action: str) -> Response:
    """Cancel or retry the run (CSRF token and origin checked), then back to it."""
    form = await form_of(request)
    if action not in _ACTIONS:
        return page("error.html", request, me, 404, title="not_found", message="no such page")
    if not session.csrf_ok(request, me, form.get("csrf", "")):
        return _forbidden(request, me)
    runs = plane_of(request).runs
    if action == "cancel":
        await run_in_threadpool(runs.cancel, run_id, me.org_id)
    else:
        await run_in_threadpool(runs.retry, run_id, me.org_id, RetryRequest())
    return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)


def _forbidden(request: Request, me: Session) -> HTMLResponse:
    message = "The form was stale or came from another site (CSRF check). Reload and retry."
    return page("error.html", request, me, 403, title="forbidden", message=message)
