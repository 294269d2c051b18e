"""The web dashboard's reads of a run's shards, as Core queries on the engine (no ORM
session): every shard's row for the live grid (no attempts), every shard with its
attempts for the run page's timeline, and the runs' *live versions* its long-poll
compares. Each read is scoped by the org (another org's run reads as none) and builds
the same ``ShardView`` the API returns (:func:`.service.shard_view`).

ORM loading of 256 shards and their attempts costs ~15 ms of the ~25 ms budget of a live
update; these take a few (bench/p8_ui.py).

A run's live version is ``"<run version>.<shards>.<sum of shard versions>"``: every
write of a run or shard row is a compare-and-set that adds one to its ``version``
(store/records.py, the ORM's ``version_id_col``), so any change of the run's row, a
shard's or the merge step's changes it (a queued run's position is a column of its row:
its moves count too). Time alone does not: elapsed time and the compute-seconds of
running attempts grow without a write."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, bindparam, func, select

from sylphx._core.errors import NotFound
from sylphx._core.views import ShardView
from sylphx._server.store import AttemptRow, RunRow, ShardRow

from . import service

__all__ = ["CHUNK", "not_found", "shard_cells", "shards_with_history", "version", "versions"]

CHUNK = 500  # run ids per IN (...) list (old SQLite builds allow 999 variables)
_RUNS: Table = RunRow.__table__  # type: ignore[assignment]
_SHARDS: Table = ShardRow.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = AttemptRow.__table__  # type: ignore[assignment]
_ORGS_RUN = select(_RUNS.c.id).where(
    _RUNS.c.id == bindparam("run_id"), _RUNS.c.org_id == bindparam("org_id")
)
_CELLS = (
    select(_SHARDS)
    .where(_SHARDS.c.run_id.in_(_ORGS_RUN.scalar_subquery()), _SHARDS.c.index >= 0)
    .order_by(_SHARDS.c.index)
)
_HISTORY = (
    select(_ATTEMPTS)
    .where(_ATTEMPTS.c.run_id.in_(_ORGS_RUN.scalar_subquery()))
    .order_by(_ATTEMPTS.c.shard_id, _ATTEMPTS.c.number)
)
_RUN_VERSIONS = select(_RUNS.c.id, _RUNS.c.version).where(
    _RUNS.c.id.in_(bindparam("ids", expanding=True))
)
_SHARD_VERSIONS = (
    select(_SHARDS.c.run_id, func.count(), func.coalesce(func.sum(_SHARDS.c.version), 0))
    .where(_SHARDS.c.run_id.in_(bindparam("ids", expanding=True)))
    .group_by(_SHARDS.c.run_id)
)
_ORGS_VERSION = select(_RUNS.c.version).where(
    _RUNS.c.id == bindparam("run_id"), _RUNS.c.org_id == bindparam("org_id")
)


def not_found(run_id: str) -> NotFound:
    """The 404 of a run the caller may not see (the API's words)."""
    return NotFound(f"run {run_id!r} not found. Fix: check the id with `sylphx runs list`.")


def shard_cells(engine: Engine, run_id: str, org_id: str) -> list[ShardView]:
    """Every shard of the org's run (not the merge step), in index order, no attempts."""
    with engine.connect() as conn:
        rows = conn.execute(_CELLS, {"run_id": run_id, "org_id": org_id}).all()
    return [service.shard_view(row, []) for row in rows]


def shards_with_history(engine: Engine, run_id: str, org_id: str) -> list[ShardView]:
    """Every shard of the org's run (not the merge step) with its attempts, in order."""
    args = {"run_id": run_id, "org_id": org_id}
    with engine.connect() as conn:
        shards = conn.execute(_CELLS, args).all()
        attempts = conn.execute(_HISTORY, args).all()
    by_shard: dict[int, list[Row[Any]]] = defaultdict(list)
    for a in attempts:
        by_shard[a.shard_id].append(a)
    return [service.shard_view(row, by_shard[row.id]) for row in shards]


def version(engine: Engine, run_id: str, org_id: str) -> str:
    """The live version of the org's run; NotFound for another org's or an unknown one."""
    with engine.connect() as conn:
        if conn.execute(_ORGS_VERSION, {"run_id": run_id, "org_id": org_id}).first() is None:
            raise not_found(run_id)
        return _versions(conn, [run_id]).get(run_id, "")


def versions(engine: Engine, run_ids: list[str]) -> dict[str, str]:
    """The live versions of ``run_ids`` (two indexed GROUP BY reads per ``CHUNK``); a
    deleted run is missing."""
    with engine.connect() as conn:
        return _versions(conn, run_ids)


def _versions(conn: Connection, run_ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(run_ids), CHUNK):
        ids = run_ids[i : i + CHUNK]
        runs = {run_id: v for run_id, v in conn.execute(_RUN_VERSIONS, {"ids": ids})}
        for run_id, count, total in conn.execute(_SHARD_VERSIONS, {"ids": ids}):
            if run_id in runs:
                out[run_id] = f"{runs[run_id]}.{count}.{total}"
    return out
