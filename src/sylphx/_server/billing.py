"""The billing meter: compute_seconds = wall_clock_seconds x machine_units, per attempt.

Usage is recorded once per attempt when it ends (a unique row per attempt). A run's
usage is the sum over its shards and attempts; a run that never starts bills nothing.
Monthly plan credits are applied first, in time order, within each calendar month (UTC).
A usage report is aggregated in the store (:func:`report`) over a bounded window
(:func:`window`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, NoReturn

from sqlalchemy import Connection, String, Table, bindparam, func, insert, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from .._errors import ValidationError
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


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # the range a usage report may ask about
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
MAX_YEARS = 10  # the longest report window
_EXAMPLE = " (ISO 8601, e.g. 2026-11-01T00:00:00Z)"


def window(from_: datetime | None, to: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of a usage report from the query's ``from`` and ``to`` (default:
    this month so far), in UTC (a time without a zone is UTC). Both inside
    1970-01-01..9999-12-31, ``from`` before ``to``, at most :data:`MAX_YEARS` apart;
    otherwise a :class:`ValidationError` naming the field, the rule and the fix."""
    end = _bounded("to", to) if to is not None else now
    start = _bounded("from", from_) if from_ is not None else _month_start(now)
    if start >= end:
        _refuse("from", "must be earlier than to", "give from earlier than to" + _EXAMPLE)
    if end > _years_after(start, MAX_YEARS):
        _refuse(
            "from",
            f"must be at most {MAX_YEARS} years before to",
            f"ask for at most {MAX_YEARS} years at a time (one request per period)",
        )
    return start, end


def _bounded(field: str, t: datetime) -> datetime:
    try:
        utc = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is in year 10000
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        rule = "must be between 1970-01-01 and 9999-12-31 (UTC)"
        _refuse(field, rule, f"give {field} in that range" + _EXAMPLE)
    return utc


def _refuse(field: str, rule: str, fix: str) -> NoReturn:
    raise ValidationError(
        f"{field}: {rule}. Fix: {fix}.", details=[{"field": field, "rule": rule, "fix": fix}]
    )


def _years_after(t: datetime, years: int) -> datetime:
    if t.year + years > LATEST.year:
        return LATEST
    try:
        return t.replace(year=t.year + years)
    except ValueError:  # 29 February, in a year that has none
        return t.replace(year=t.year + years, month=3, day=1)


def _month_start(t: datetime) -> datetime:
    return datetime(t.year, t.month, 1, tzinfo=UTC)


class _Month(FunctionElement[str]):
    """The calendar month (UTC) of a :class:`UTCDateTime` column as ``'YYYY-MM'``, which
    sorts in time order: the key that groups usage into the months credits apply to."""

    type = String()
    inherit_cache = True
    name = "usage_month"


@compiles(_Month, "sqlite")
def _month_sqlite(element: _Month, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps UTCDateTime as UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 7)"


@compiles(_Month, "postgresql")
def _month_postgresql(element: _Month, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM')"


_FROM_ORG = _USAGE.c.org_id == bindparam("org_id")
_GROUPS = (  # one scan of the window: what every total, credit and breakdown is made of
    select(
        _Month(_USAGE.c.ended_at),
        _USAGE.c.run_id,
        _USAGE.c.machine,
        func.sum(_USAGE.c.wall_seconds),
        func.sum(_USAGE.c.compute_seconds),
    )
    .where(_FROM_ORG, _USAGE.c.ended_at >= bindparam("start"), _USAGE.c.ended_at < bindparam("end"))
    .group_by(_Month(_USAGE.c.ended_at), _USAGE.c.run_id, _USAGE.c.machine)
)
_BEFORE = select(func.sum(_USAGE.c.compute_seconds)).where(  # this month's, before the window
    _FROM_ORG, _USAGE.c.ended_at >= bindparam("month"), _USAGE.c.ended_at < bindparam("start")
)


def report(s: Session, org: OrgRow, start: datetime, end: datetime) -> UsageReport:
    """Usage of ``org`` for attempts that ended in ``[start, end)``, with credits applied.

    Two queries whatever the window: the window's usage grouped by (month, run, machine)
    and the usage of the first month before ``start`` (credit it already used). Only
    months with usage are seen, so a long empty range costs nothing."""
    credit = limits(org).monthly_credit_seconds
    window = {"org_id": org.id, "start": start, "end": end}
    by_month: dict[str, float] = defaultdict(float)
    by_run: dict[str, float] = defaultdict(float)
    by_machine: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for month, run_id, machine, wall, compute in s.execute(_GROUPS, window):
        by_month[month] += compute
        by_run[run_id] += compute
        by_machine[machine][0] += wall
        by_machine[machine][1] += compute
    before = s.execute(_BEFORE, {**window, "month": _month_start(start)}).scalar()
    used = {f"{start.year:04d}-{start.month:02d}": float(before or 0.0)}
    total = applied = 0.0
    for month, within in sorted(by_month.items()):  # in time order, as credits apply
        applied += min(max(credit - used.get(month, 0.0), 0.0), within)
        total += within
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
