"""Run operations behind the API: submit, read, list, cancel, and their views."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, func, insert, select
from sqlalchemy.orm import Session, selectinload

from sylphx._core.errors import ConflictError, NotFound, ValidationError
from sylphx._core.ids import new_id
from sylphx._core.machines import Resources
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.spec import RunSpec
from sylphx._core.states import AttemptState, RunState, ShardState
from sylphx._core.views import AttemptView, RunList, RunView, ShardView
from sylphx._server.controller.policy import admission, success
from sylphx._server.controller.transitions import transition
from sylphx._server.store import AttemptRow, OrgRow, RunRow, ShardRow, VolumeRow
from sylphx._server.store.batch import Batch
from sylphx._server.store.records import SHARDS
from sylphx._server.tenancy import billing, quota, secrets, spend
from sylphx._server.tenancy.orgs import limits

from . import triage

_RUN_ID = re.compile(r"wrk_[0-9a-z]{16}")  # see _ids.new_id
_INSERT_RUN = insert(cast(Table, RunRow.__table__))
_NO_VALUES: dict[str, Any] = {column.key: None for column in RunRow.__table__.columns}
_INSERT_SHARDS = Batch(
    insert(SHARDS), ("run_id", "index", "state", "attempts", "failures", "preemptions", "ignored")
)


def new_run(
    s: Session,
    spec: RunSpec,
    org: OrgRow,
    *,
    capacity: Resources,
    now: datetime,
    idempotency_key: str | None = None,
    in_use: int | None = None,
    run_id: str | None = None,
    image_digests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The row of a new queued run of ``spec``, past every check :func:`admit` makes;
    nothing written yet (see :func:`insert_runs`)."""
    admit(s, spec, org, capacity=capacity, now=now, in_use=in_use)
    row = new_row(spec, org.id, now, idempotency_key=idempotency_key, run_id=run_id)
    return row | {"image_digests": image_digests}


def new_row(
    spec: RunSpec,
    org_id: str,
    now: datetime,
    *,
    idempotency_key: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The row values of a new queued run of ``spec`` (no check: see :func:`new_run`)."""
    return _NO_VALUES | dict(
        id=run_id or new_id("wrk"), org_id=org_id, state=RunState.QUEUED.value, spec=spec.to_wire(),
        parallelism=spec.parallelism, machine=spec.machine, gang=spec.gang, created_at=now,
        idempotency_key=idempotency_key, reopened=0, version=1,
    )  # fmt: skip


def insert_runs(conn: Connection, runs: list[tuple[dict[str, Any], RunSpec]]) -> None:
    """Insert new runs (each its :func:`new_run` row and spec) and their pending shards:
    Core statements, one executemany per table (no ORM object or flush per run)."""
    conn.execute(_INSERT_RUN, [values for values, _ in runs])
    shard = {"state": str(ShardState.PENDING), "attempts": 0, "failures": 0, "preemptions": 0}
    _INSERT_SHARDS.execute(
        conn,
        [
            {"run_id": values["id"], "index": i, "ignored": 0, **shard}
            for values, spec in runs
            for i in [*range(spec.parallelism), *([MERGE_INDEX] if spec.merge else [])]
        ],
    )


def admit(
    s: Session,
    spec: RunSpec,
    org: OrgRow,
    *,
    capacity: Resources,
    now: datetime,
    in_use: int | None = None,
) -> None:
    """Every check a submit of ``spec`` makes before it stores anything (a quote makes
    them too): GPU tiers, the org's spend limit (402), the plan's ceiling and concurrent
    budget (429), whether it could ever fit (422), its secrets and volumes (404).
    ``in_use``: the org's shards in use, counted (and spend checked) already."""
    merge_machine = spec.merge.machine if spec.merge else None
    admission.check_cpu_tiers(spec.machine, merge_machine)
    if in_use is None:
        spend.check(s, org, now)  # 402 at the org's monthly limit
        in_use = shards_in_use(s, org.id)
    quota.check(limits(org), org=org.name, in_use=in_use, requested=spec.parallelism)
    admission.check_schedulable(
        machine=spec.machine, parallelism=spec.parallelism, gang=spec.gang, total=capacity
    )
    if merge_machine:
        admission.check_schedulable(
            machine=merge_machine, parallelism=1, gang=False, total=capacity, field="merge.machine"
        )
    check_references(s, org.id, spec)


def check_references(s: Session, org_id: str, spec: RunSpec, run_id: str | None = None) -> None:
    """The secrets and volumes ``spec`` names exist and are the org's, or NotFound naming
    the one that is not (``run_id``: the ended run a retry would run again)."""
    secrets.check_exist(s, org_id, spec.secrets)
    for mount in spec.volume_mounts:
        volume = s.get(VolumeRow, mount.volume_id)
        if volume is not None and volume.org_id == org_id:
            continue
        if run_id is None:
            raise NotFound(
                f"volumeMounts: volume {mount.volume_id!r} does not exist. Fix: create it with"
                " `sylphx volumes create` (POST /v1/volumes) and use its id."
            )
        raise NotFound(
            f"volumeMounts: volume {mount.volume_id!r} of run {run_id} no longer exists,"
            " so its shards cannot run again. Fix: submit a new run with a volume that"
            " exists (sylphx volumes list)."
        )


_IN_USE = (  # built once: every submit runs it
    select(func.count())
    .select_from(ShardRow)
    .join(RunRow, RunRow.id == ShardRow.run_id)
    .where(
        RunRow.org_id == bindparam("org_id"),
        # a merge step holds its unit from the submit until it ends: merges waiting for
        # their shards can never start past the budget
        ShardRow.state.in_([st.value for st in ShardState if not st.terminal]),
    )
)


def shards_in_use(s: Session, org_id: str) -> int:
    """Units of the org's concurrent-shard budget held now: its unfinished shards."""
    return int(s.scalar(_IN_USE, {"org_id": org_id}) or 0)


def load(
    s: Session, run_id: str, org_id: str, *, with_attempts: bool = False, lock: bool = False
) -> RunRow:
    """The org's run with its shards, or NotFound (also for another org's run). With
    ``lock``, its row is locked until the transaction ends (PostgreSQL; SQLite's writers
    are one at a time already): a writer that reads a run to change it must, or a
    reconciler that rewrites the run every pass wins each compare-and-set against it."""
    opts = selectinload(RunRow.shards)
    if with_attempts:
        opts = opts.selectinload(ShardRow.history)
    query = select(RunRow).where(RunRow.id == run_id, RunRow.org_id == org_id).options(opts)
    run = s.scalars(query.with_for_update(of=RunRow) if lock else query).first()
    if run is None:
        raise NotFound(f"run {run_id!r} not found. Fix: check the id with `sylphx runs list`.")
    return run


def cancel(s: Session, run_id: str, org_id: str, now: datetime) -> RunRow:
    """Ask for a run to be cancelled; the reconciler stops its shards within seconds."""
    run = load(s, run_id, org_id, lock=True)
    if RunState(run.state).terminal:
        return run
    if run.cancel_requested_at is None:
        run.cancel_requested_at = now
    if run.state == RunState.QUEUED:  # nothing started: settle it right away
        for shard in run.shards:
            if shard.state == ShardState.PENDING:
                transition(shard, ShardState.CANCELLED, now)
                shard.reason = "Cancelled before it started"
        transition(run, RunState.CANCELLED, now)
        run.message = "cancelled before any shard started"
    return run


def delete(s: Session, run_id: str, org_id: str) -> list[str]:
    """Delete an ended run with its shards and attempts; its usage rows stay (billing is
    history). Returns the log files to remove once the deletion is committed. A run that
    has not ended, or whose shards are still being stopped, is a 409."""
    run = load(s, run_id, org_id, with_attempts=True, lock=True)
    fix = f"cancel it first (sylphx runs cancel {run_id}), then delete it once it has ended"
    if not RunState(run.state).terminal:
        raise ConflictError(
            f"run {run_id} is {run.state}: only an ended run can be deleted. Fix: {fix}.",
            details=[{"field": "status", "rule": "must be terminal", "fix": fix}],
        )
    attempts = [a for shard in run.shards for a in shard.history]
    if any(a.ended_at is None for a in attempts):
        raise ConflictError(
            f"run {run_id} has ended but some of its shards are still being stopped."
            " Fix: retry in a few seconds."
        )
    paths = [p for a in attempts for p in (a.stdout_path, a.stderr_path) if p]
    s.delete(run)  # shards and attempts go with it (ON DELETE CASCADE, ORM cascade)
    return paths


def view(
    run: RunRow | Row[Any] | SimpleNamespace,
    counts: Counter[ShardState] | None = None,
    compute_seconds: float = 0.0,
    merge: ShardView | None = None,
    spec: RunSpec | None = None,
) -> RunView:
    """The wire view of a run: a RunRow (its shards loaded unless ``counts`` is given), or a
    row of the runs table (or a new run's :func:`new_run` values, as attributes) with
    ``counts`` (of its shards, the merge step's not among them) and its ``merge`` step's
    view. ``spec``: the run's spec when the caller has it parsed (a submit's own), not
    read again from the stored one."""
    if counts is None:
        assert isinstance(run, RunRow)
        counts = success.count_states(shard.state for shard in run.shards if shard.index >= 0)
        step = next((shard for shard in run.shards if shard.index == MERGE_INDEX), None)
        merge = shard_view(step, step.history) if step is not None else None
    state = RunState(run.state)
    return RunView(
        id=run.id,
        status=state,
        spec=spec if spec is not None else RunSpec.from_store(run.spec),
        aggregate=success.aggregate(state, counts),
        created_at=run.created_at,
        started_at=run.started_at,
        ended_at=run.ended_at,
        cancel_requested=run.cancel_requested_at is not None,
        message=run.message,
        compute_seconds=compute_seconds,
        queue_position=run.queue_position if state is RunState.QUEUED else None,
        reopened=run.reopened or 0,
        image_digests=getattr(run, "image_digests", None) or {},
        merge=merge,
    )


def full_view(s: Session, run: RunRow, now: datetime) -> RunView:
    """The view with the compute-seconds metered so far."""
    out = view(run)
    out.compute_seconds = billing.run_usage(s, run.id, metered_tier(run, out.merge), now)[0]
    return with_failure_groups(s, out)


_RUNS, _SHARDS, _ATTEMPTS = RunRow.__table__, ShardRow.__table__, AttemptRow.__table__
# Prebuilt Core statements for the polling path: no ORM objects, and no statement to build
# and hash per request (SQLAlchemy's compiled cache is keyed on the statement's structure).
_RUN = select(_RUNS).where(_RUNS.c.id == bindparam("run_id"), _RUNS.c.org_id == bindparam("org_id"))
_STATE_COUNTS = (
    select(_SHARDS.c.run_id, _SHARDS.c.state, func.count())
    .where(_SHARDS.c.run_id.in_(bindparam("run_ids", expanding=True)), _SHARDS.c.index >= 0)
    .group_by(_SHARDS.c.run_id, _SHARDS.c.state)
)
_MERGES = select(_SHARDS).where(
    _SHARDS.c.run_id.in_(bindparam("run_ids", expanding=True)), _SHARDS.c.index == MERGE_INDEX
)
_MERGE_ATTEMPTS = (
    select(_ATTEMPTS)
    .where(_ATTEMPTS.c.shard_id.in_(bindparam("shard_ids", expanding=True)))
    .order_by(_ATTEMPTS.c.number)
)


def merge_views(
    db: Session | Connection, runs: list[RunRow] | list[Row[Any]]
) -> dict[str, ShardView]:
    """The merge steps of those of ``runs`` that have one, by run id (two small queries,
    none for runs without a merge)."""
    ids = [run.id for run in runs if (run.spec or {}).get("merge")]
    if not ids:
        return {}
    steps = db.execute(_MERGES, {"run_ids": ids}).all()
    history: dict[int, list[Row[Any]]] = {step.id: [] for step in steps}
    for attempt in db.execute(_MERGE_ATTEMPTS, {"shard_ids": list(history)}):
        history[attempt.shard_id].append(attempt)
    return {step.run_id: shard_view(step, history[step.id]) for step in steps}


def read(db: Session | Connection, run_id: str, org_id: str, now: datetime) -> tuple[RunView, bool]:
    """``GET /v1/runs/{id}``: the org's run (NotFound otherwise) as :func:`full_view` shows
    it, in three small queries that load no shards; and whether that view is final (the
    run is terminal and no attempt is left open), so it may be cached for good."""
    run = db.execute(_RUN, {"run_id": run_id, "org_id": org_id}).first()
    if run is None:
        raise NotFound(f"run {run_id!r} not found. Fix: check the id with `sylphx runs list`.")
    counts = state_counts(db, [run_id])[run_id]
    merge = merge_views(db, [run]).get(run_id)
    compute, unended = billing.run_usage(db, run_id, metered_tier(run, merge), now)
    final = RunState(run.state).terminal and unended == 0
    return with_failure_groups(db, view(run, counts, compute, merge)), final


def with_failure_groups(db: Session | Connection, out: RunView) -> RunView:
    """``out`` with its failure groups (reading the failed shards' stderr tails)."""
    if out.aggregate.failed or out.aggregate.timed_out:
        out.failure_groups = triage.failure_groups(db, out.id)
    return out


def metered_tier(run: RunRow | Row[Any], merge: ShardView | None) -> str:
    """The tier the run's live attempts are metered at: its merge step's while that runs
    (every shard has ended by then), else its own."""
    if merge is not None and merge.status.live:
        return str((run.spec.get("merge") or {}).get("machine") or run.machine)
    return str(run.machine)


def state_counts(db: Session | Connection, run_ids: list[str]) -> dict[str, Counter[ShardState]]:
    """Shard counts by state of each run (one GROUP BY; shards are not loaded)."""
    counts: dict[str, Counter[ShardState]] = {run_id: Counter() for run_id in run_ids}
    if run_ids:
        for run_id, state, n in db.execute(_STATE_COUNTS, {"run_ids": run_ids}):
            counts[run_id][ShardState(state)] = n
    return counts


def shard_views(run: RunRow) -> list[ShardView]:
    """The run's shards (the merge step is not one) with their attempts."""
    return [shard_view(shard, shard.history) for shard in run.shards if shard.index >= 0]


def shard_view(shard: ShardRow | Row[Any], attempts: Sequence[AttemptRow | Row[Any]]) -> ShardView:
    """One shard (or the merge step) with its ``attempts``, as the API shows it."""
    duration = None
    if shard.started_at is not None and shard.ended_at is not None:
        duration = round((shard.ended_at - shard.started_at).total_seconds(), 3)
    history = [
        AttemptView(
            attempt=a.number,
            status=AttemptState(a.state),
            exit_code=a.exit_code,
            reason=a.reason,
            started_at=a.started_at,
            ended_at=a.ended_at,
            log_truncated=a.log_truncated.split(",") if a.log_truncated else [],
        )
        for a in attempts
    ]
    latest = max(history, key=lambda a: a.attempt, default=None)
    return ShardView(
        index=shard.index,
        status=ShardState(shard.state),
        attempts=shard.attempts,
        preemptions=shard.preemptions,
        exit_code=shard.exit_code,
        reason=shard.reason,
        started_at=shard.started_at,
        ended_at=shard.ended_at,
        duration_seconds=duration,
        retry_at=shard.not_before if shard.state == ShardState.PENDING else None,
        log_truncated=latest.log_truncated if latest is not None else [],
        history=history,
    )


def list_runs(
    s: Session, org_id: str, *, status: RunState | None, limit: int, cursor: str | None
) -> RunList:
    """The org's runs, newest first; ``cursor`` is the last id of the previous page."""
    query = (
        select(RunRow).where(RunRow.org_id == org_id).order_by(RunRow.id.desc()).limit(limit + 1)
    )
    if status is not None:
        query = query.where(RunRow.state == status.value)
    if cursor is not None:
        if not _RUN_ID.fullmatch(cursor):
            fix = "pass the nextCursor of the previous page, or omit cursor for the first page"
            raise ValidationError(
                f"cursor: is not a cursor this API gave out. Fix: {fix}.",
                details=[{"field": "cursor", "rule": "is not a cursor this API gave", "fix": fix}],
            )
        query = query.where(RunRow.id < cursor)
    runs = list(s.scalars(query))
    more = len(runs) > limit
    runs = runs[:limit]
    counts = state_counts(s, [run.id for run in runs])
    merges = merge_views(s, runs)
    items = [view(run, counts[run.id], merge=merges.get(run.id)) for run in runs]
    return RunList(items=items, next_cursor=runs[-1].id if more and runs else None)
