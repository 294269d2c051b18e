"""The billing meter: compute_seconds = wall_clock_seconds x machine_units, per attempt.

Usage is recorded once per attempt when it ends (a unique row per attempt). A run's
usage is the sum over its shards and attempts; a run that never starts bills nothing.
Monthly plan credits are applied first, in time order, within each calendar month.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import Connection, Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from .._machines import MACHINES
from .._views import UsageByMachine, UsageByRun, UsageReport
from .orgs import limits
from .store import AttemptRow, OrgRow, RunRow, UsageRow
from .store.batch import Batch
from .store.records import AttemptRecord

USAGE_KEYS = (  # the columns of a usage row, all given
    "attempt_id",
    "org_id",
    "run_id",
    "machine",
    "started_at",
    "ended_at",
    "wall_seconds",
    "units",
    "compute_seconds",
)


def meter(machine: str, started_at: datetime, ended_at: datetime) -> tuple[float, float]:
    """(wall seconds, standard compute-seconds) of one attempt window."""
    wall = max((ended_at - started_at).total_seconds(), 0.0)
    return wall, wall * MACHINES[machine].units


def usage(
    attempt: AttemptRow | AttemptRecord, run: RunRow, *, ran: bool = True
) -> dict[str, object]:
    """The usage row of an ended attempt (see :func:`record`); ``ran=False`` (the launch
    failed) bills zero."""
    assert attempt.started_at is not None and attempt.ended_at is not None
    started = attempt.started_at
    ended = attempt.ended_at if ran else started
    wall, compute = meter(run.machine, started, ended)
    return {
        "attempt_id": attempt.id,
        "org_id": run.org_id,
        "run_id": run.id,
        "machine": run.machine,
        "started_at": started,
        "ended_at": attempt.ended_at,
        "wall_seconds": wall,
        "units": MACHINES[run.machine].units,
        "compute_seconds": compute,
    }


def record(s: Session, rows: list[dict[str, object]]) -> None:
    """Store the :func:`usage` rows of ended attempts: one executemany INSERT, not one
    ORM object (and statement) per attempt."""
    _INSERT_USAGE.execute(s.connection(), rows)


def run_compute_seconds(s: Session, run: RunRow, now: datetime) -> float:
    """Metered so far: ended attempts plus the open window of live ones."""
    return run_usage(s, run.id, run.machine, now)[0]


_USAGE: Table = UsageRow.__table__  # type: ignore[assignment]
_ATTEMPTS = AttemptRow.__table__
_INSERT_USAGE = Batch(insert(_USAGE), USAGE_KEYS)
_METERED = select(func.sum(_USAGE.c.compute_seconds)).where(_USAGE.c.run_id == bindparam("run_id"))
_UNENDED = (  # one reconcile pass starts many shards with the same timestamp: few groups
    select(_ATTEMPTS.c.started_at, func.count())
    .where(_ATTEMPTS.c.run_id == bindparam("run_id"), _ATTEMPTS.c.ended_at.is_(None))
    .group_by(_ATTEMPTS.c.started_at)
)


def run_usage(
    db: Session | Connection, run_id: str, machine: str, now: datetime
) -> tuple[float, int]:
    """(compute-seconds metered so far: ended attempts plus the open window of live ones,
    number of attempts not ended)."""
    done = db.execute(_METERED, {"run_id": run_id}).scalar()
    unended = db.execute(_UNENDED, {"run_id": run_id}).all()
    windows = sum(meter(machine, started, now)[1] * n for started, n in unended if started)
    return round(float(done or 0.0) + windows, 3), sum(n for _, n in unended)


def _month_start(t: datetime) -> datetime:
    return datetime(t.year, t.month, 1, tzinfo=UTC)


def _next_month(t: datetime) -> datetime:
    return datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)


def _sum(s: Session, org_id: str, start: datetime, end: datetime) -> float:
    total = s.scalar(
        select(func.sum(UsageRow.compute_seconds)).where(
            UsageRow.org_id == org_id, UsageRow.ended_at >= start, UsageRow.ended_at < end
        )
    )
    return float(total or 0.0)


def report(s: Session, org: OrgRow, start: datetime, end: datetime) -> UsageReport:
    """Usage of ``org`` for attempts that ended in ``[start, end)``, with credits applied."""
    credit = limits(org).monthly_credit_seconds
    total = applied = 0.0
    month = _month_start(start)
    while month < end:
        lo, hi = max(start, month), min(end, _next_month(month))
        before = _sum(s, org.id, month, lo)  # credit already used earlier this month
        within = _sum(s, org.id, lo, hi)
        applied += min(max(credit - before, 0.0), within)
        total += within
        month = _next_month(month)
    rows = s.execute(
        select(
            UsageRow.run_id, UsageRow.machine, UsageRow.wall_seconds, UsageRow.compute_seconds
        ).where(UsageRow.org_id == org.id, UsageRow.ended_at >= start, UsageRow.ended_at < end)
    ).all()
    by_run: dict[str, float] = defaultdict(float)
    by_machine: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for run_id, machine, wall, compute in rows:
        by_run[run_id] += compute
        by_machine[machine][0] += wall
        by_machine[machine][1] += compute
    return UsageReport(
        org=org.name,
        plan=org.plan,
        from_=start,
        to=end,
        compute_seconds=round(total, 3),
        credits_applied=round(applied, 3),
        billable_seconds=round(total - applied, 3),
        monthly_credit_seconds=credit,
        by_run=[
            UsageByRun(run_id=r, compute_seconds=round(c, 3)) for r, c in sorted(by_run.items())
        ],
        by_machine=[
            UsageByMachine(machine=m, wall_seconds=round(w, 3), compute_seconds=round(c, 3))
            for m, (w, c) in sorted(by_machine.items())
        ],
    )
