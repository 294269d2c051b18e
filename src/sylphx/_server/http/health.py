"""Liveness and readiness, answered honestly and without an API key.

``GET /healthz`` (liveness): the process is alive and its event loop answers. It touches
neither the store nor a disk, so a supervisor does not restart a process for a database
outage that a restart cannot mend.

``GET /readyz`` (readiness): 200 only while this process can serve -- it is not shutting
down, the store answers a query within :data:`STORE_TIMEOUT`, the reconciler lease's state
is known (this process holds it, or stands by while another one does) and the log disk has
room (:data:`~.faults.MIN_FREE_BYTES`). Otherwise a 503 in the API's error shape with one
detail per failing check: its name (``field``), what is wrong (``rule``) and the fix.

The store and the disk are probed in the thread pool, one probe of each at a time: a store
that hangs holds one thread, never the event loop, and every /readyz meanwhile answers 503
after the timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import Engine, text

from sylphx._core.errors import ServerUnavailable
from sylphx._core.views import Health, Readiness
from sylphx._server.executors import Executor
from sylphx._server.infra import faults
from sylphx._server.infra.lease import ADVISORY_KEY, Lease

from . import edge

__all__ = ["DISK_TIMEOUT", "STORE_TIMEOUT", "install"]

STORE_TIMEOUT = 2.0  # seconds the store has to answer /readyz's query
DISK_TIMEOUT = 2.0  # seconds the log disk has to answer statvfs (a hung network disk)

Detail = dict[str, str]
T = TypeVar("T")

# The holders of the reconciler's advisory lock in this database (see lease.py).
_PG_HOLDERS = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"
)


def install(
    app: FastAPI,
    *,
    engine: Engine,
    executor: Executor,
    logs_dir: Path,
    lease: Lease | None,
    reconcile_interval: float,
    draining: Callable[[], bool],
) -> None:
    """Register ``GET /healthz`` and ``GET /readyz`` on ``app``, checking these parts:
    the store behind ``engine``, the disk of ``logs_dir``, the reconciler's ``lease``
    (None: this process is the only reconciler) and whether the process is ``draining``."""
    store = _Probe(lambda: _probe_store(engine))
    disk = _Probe(lambda: _probe_disk(logs_dir))

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Response:
        """Liveness: the process and its event loop answer (no store, no disk, no key)."""
        cap = executor.capacity().text()
        out = Health(executor=executor.name, capacity=cap)
        return Response(out.model_dump_json(by_alias=True), media_type="application/json")

    @app.get("/readyz", response_model=Readiness, tags=["health"])
    async def readyz() -> Response:
        """Readiness: 200 while the store answers, the reconciler lease's holder is known
        and the log disk has room; otherwise 503 naming each failing check and its fix."""
        failed: list[Detail] = []
        if draining():
            failed.append(_draining())
        probed, free = await asyncio.gather(store(STORE_TIMEOUT), disk(DISK_TIMEOUT))
        if probed is None:
            probed = (f"no answer within {STORE_TIMEOUT:g} s", None)
        store_error, holders = probed
        if store_error is not None:
            failed.append(_store_failure(engine, store_error))
        held = _lease(lease, reconcile_interval, holders)
        if isinstance(held, dict):
            failed.append(held)
        if not isinstance(free, int) or free < faults.MIN_FREE_BYTES:
            failed.append(_disk_failure(logs_dir, free))
        if failed or isinstance(held, dict) or not isinstance(free, int):
            lines = [f"{d['field']}: {d['rule']}. Fix: {d['fix']}" for d in failed]
            err = ServerUnavailable("not ready: " + "; ".join(lines) + ".", details=failed)
            return edge.error_response(err)
        role, holder = held
        out = Readiness(
            store=engine.dialect.name,
            lease=role,
            lease_holder=holder,
            log_disk_free_bytes=free,
        )
        return Response(out.model_dump_json(by_alias=True), media_type="application/json")


class _Probe(Generic[T]):
    """``fn`` in the thread pool, one call at a time: a caller waits for the call under
    way (or starts one) at most ``timeout`` seconds; None when it did not end by then."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self._call: asyncio.Future[T] | None = None

    async def __call__(self, timeout: float) -> T | None:
        if self._call is None or self._call.done():
            self._call = asyncio.ensure_future(run_in_threadpool(self.fn))
        try:
            return await asyncio.wait_for(asyncio.shield(self._call), timeout)
        except TimeoutError:
            return None


# -- the checks (in the thread pool) -------------------------------------------------------
def _probe_store(engine: Engine) -> tuple[str | None, list[int] | None]:
    """(why the store failed, or None; on PostgreSQL the lease holders' backend pids).

    PostgreSQL: ``SELECT 1`` on a pooled connection (pre-pinged), then the lease's lock.
    SQLite: the file is opened anew and read, as a restart would -- a pooled connection
    answers ``SELECT 1`` without touching the file, even after the file is gone."""
    try:
        if engine.dialect.name != "postgresql":
            _read_sqlite(engine)
            return None, None
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            key = {"hi": ADVISORY_KEY >> 32, "lo": ADVISORY_KEY & 0xFFFFFFFF}
            got = conn.execute(_PG_HOLDERS, key)
            return None, [int(pid) for pid in got.scalars()]
    except Exception as exc:  # any failure is the answer: the store cannot serve
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return (cause[0] if cause else type(exc).__name__), None


def _read_sqlite(engine: Engine) -> None:
    path = engine.url.database or ""
    if path in ("", ":memory:"):
        return
    uri = f"file:{Path(path).resolve()}?mode=rw"  # never creates an empty store
    conn = sqlite3.connect(uri, uri=True, timeout=STORE_TIMEOUT)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()


def _probe_disk(logs_dir: Path) -> int | str:
    """The log disk's free bytes, or why they could not be read."""
    try:
        return shutil.disk_usage(logs_dir).free
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _flock_holder(path: Path) -> int | None:
    """The pid holding an ``flock`` on ``path``, from /proc/locks (Linux), or None."""
    try:
        ino = os.stat(path).st_ino
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF" ("->": waiters)
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].endswith(f":{ino}"):
            return int(parts[4])
    return None


# -- what each check answers ----------------------------------------------------------------
def _lease(
    lease: Lease | None, reconcile_interval: float, holders: list[int] | None
) -> tuple[str, str] | Detail:
    """("holder" or "standby", who holds it), or the lease check's failure."""
    me = f"this process (pid {os.getpid()})"
    wait = f"{max(reconcile_interval, 1.0):g} s"
    lost = (
        f"none if it passes: the reconciler takes a free lease within {wait}; if it lasts,"
        " read this process's log for 'reconcile pass failed'"
    )
    if lease is None:
        return "holder", me
    if lease.postgres:
        if holders is None:
            return {
                "field": "lease",
                "rule": "its holder is unknown: the lease lives in the store, which does not"
                " answer",
                "fix": "bring the store back (see the store check); the lease is re-taken"
                " by itself",
            }
        if lease.held and holders:
            return "holder", me
        if holders:
            return "standby", f"another process (PostgreSQL backend pid {holders[0]})"
    else:
        if lease.held:
            return "holder", me
        pid = _flock_holder(lease.path)
        if pid is not None:
            return "standby", f"another process (pid {pid})"
    return {
        "field": "lease",
        "rule": "no process holds the reconciler lease, so no run advances",
        "fix": lost,
    }


def _draining() -> Detail:
    return {
        "field": "draining",
        "rule": "the control plane is shutting down and accepts no new runs",
        "fix": "send new work to another process; this one exits once it has answered",
    }


def _store_failure(engine: Engine, cause: str) -> Detail:
    err = faults.store_unavailable(RuntimeError(cause), engine)
    said, _, fix = err.message.partition(" Fix: ")
    return {
        "field": "store",
        "rule": f"must answer a query within {STORE_TIMEOUT:g} s; {said.removesuffix('.')}",
        "fix": fix.removesuffix("."),
    }


def _disk_failure(logs_dir: Path, free: int | str | None) -> Detail:
    if free is None:
        free = f"did not answer within {DISK_TIMEOUT:g} s"
    if isinstance(free, int):
        err = faults.disk_full(logs_dir, "log", free)
        said, _, fix = err.message.partition(" Fix: ")
        rule = f"must have {faults.MIN_FREE_BYTES:,} bytes free; {said.removesuffix('.')}"
        return {"field": "disk", "rule": rule, "fix": fix.removesuffix(".")}
    return {
        "field": "disk",
        "rule": f"the log disk at {logs_dir} {free}",
        "fix": "check the disk holding SYLPHX_HOME/logs (mounted, readable, not hung)",
    }
