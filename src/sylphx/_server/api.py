"""The HTTP API (FastAPI). Errors are mapped to HTTP here, once, from the error tree."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import StaleDataError

from .._errors import ConflictError, ServerUnavailable, SylphxError
from .._spec import RunSpec, validation_error
from .._states import RunState
from .._views import RunList, RunView, ShardView, VolumeView
from . import faults, logs, runs, volumes
from .plane import ControlPlane

log = logging.getLogger("sylphx.api")
CAS_RETRIES = 3


class VolumeCreate(BaseModel):
    name: str | None = None


def create_app(plane: ControlPlane) -> FastAPI:
    """The API app around ``plane``; the app's lifespan starts and stops the plane."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        plane.start()
        try:
            yield
        finally:
            plane.stop()

    app = FastAPI(title="sylphx", version="0.1.0", lifespan=lifespan)
    sessions = plane.sessions

    @app.exception_handler(SylphxError)
    async def _sylphx_error(_: Request, exc: SylphxError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status_code)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _store_error(_: Request, exc: Exception) -> JSONResponse:
        err = faults.store_unavailable(exc, plane.engine)
        log.error("%s", err.message)
        return JSONResponse(err.to_body(), status_code=err.status_code)

    @app.exception_handler(OSError)
    async def _os_error(_: Request, exc: OSError) -> JSONResponse:
        if not faults.is_disk_full(exc):
            raise exc
        err = faults.disk_full(plane.settings.home, "data")
        log.error("%s", err.message)
        return JSONResponse(err.to_body(), status_code=err.status_code)

    @app.exception_handler(StaleDataError)
    async def _conflict(_: Request, exc: StaleDataError) -> JSONResponse:
        err = ConflictError("the object changed while this request ran. Fix: retry the request.")
        return JSONResponse(err.to_body(), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()), RunSpec)
        return JSONResponse(err.to_body(), status_code=err.status_code)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "ok": True,
            "executor": plane.executor.name,
            "capacity": plane.executor.capacity().text(),
        }

    @app.post("/v1/runs", status_code=201, response_model=RunView)
    def submit_run(spec: RunSpec) -> RunView:
        if plane.draining:
            raise ServerUnavailable(
                "the control plane is shutting down and accepts no new runs; running shards"
                " keep running. Fix: retry in a few seconds, once it has restarted."
            )
        faults.check_disk(plane.settings.logs_dir, "log")
        with sessions.begin() as s:
            run = runs.submit(s, spec, capacity=plane.executor.capacity(), now=plane.now())
            out = runs.view(run)
        plane.reconciler.wake()
        return out

    @app.get("/v1/runs", response_model=RunList)
    def list_runs(
        status: RunState | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: str | None = None,
    ) -> RunList:
        with sessions() as s:
            return runs.list_runs(s, status=status, limit=limit, cursor=cursor)

    @app.get("/v1/runs/{run_id}", response_model=RunView)
    def get_run(run_id: str) -> RunView:
        with sessions() as s:
            return runs.view(runs.load(s, run_id))

    @app.get("/v1/runs/{run_id}/shards", response_model=list[ShardView])
    def get_shards(run_id: str) -> list[ShardView]:
        with sessions() as s:
            return runs.shard_views(runs.load(s, run_id, with_attempts=True))

    @app.post("/v1/runs/{run_id}/cancel", status_code=202, response_model=RunView)
    def cancel_run(run_id: str) -> RunView:
        for attempt in range(CAS_RETRIES):  # the reconciler may update the run meanwhile
            try:
                with sessions.begin() as s:
                    out = runs.view(runs.cancel(s, run_id, plane.now()))
                break
            except StaleDataError:
                if attempt == CAS_RETRIES - 1:
                    raise
        plane.reconciler.wake()
        return out

    @app.get("/v1/runs/{run_id}/logs")
    async def get_logs(
        run_id: str,
        shard: Annotated[int, Query(ge=0)],
        stream: Literal["stdout", "stderr"] = "stdout",
        follow: bool = False,
        attempt: Annotated[int | None, Query(ge=1)] = None,
    ) -> StreamingResponse:
        body = logs.stream_log(sessions, run_id, shard, stream, attempt=attempt, follow=follow)
        first = await anext(body, b"")  # surface NotFound as a 404 before streaming starts

        async def chained() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in body:
                yield chunk

        return StreamingResponse(chained(), media_type="text/plain; charset=utf-8")

    @app.post("/v1/volumes", status_code=201, response_model=VolumeView)
    def create_volume(body: VolumeCreate | None = None) -> VolumeView:
        with sessions.begin() as s:
            return volumes.create(
                s,
                name=body.name if body else None,
                root=plane.settings.volumes_dir,
                now=plane.now(),
            )

    @app.get("/v1/volumes", response_model=list[VolumeView])
    def list_volumes() -> list[VolumeView]:
        with sessions() as s:
            return volumes.list_all(s)

    @app.delete("/v1/volumes/{volume_id}", status_code=204)
    def delete_volume(volume_id: str) -> Response:
        with sessions.begin() as s:
            volumes.delete(s, volume_id)
        return Response(status_code=204)

    return app
