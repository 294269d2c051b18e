"""The billing meter: compute_seconds = wall_clock_seconds x machine_units, per attempt.

Usage is recorded once per attempt when it ends (a unique row per attempt). A run's
usage is the sum over its shards and attempts; a run that never starts bills nothing.
Monthly plan credits are applied first, in time order, within each calendar month (UTC).
A usage report is aggregated in the store (:func:`report`) over a bounded window
(:func:`window`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Connection, String, Table, bindparam, case, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from sylphx._core.errors import ValidationError
from sylphx._core.machines import MACHINES
from sylphx._core.views import UsageByMachine, UsageByRun, UsageReport
from sylphx._server.store import AttemptRow, OrgRow, RunRow, UsageRow
from sylphx._server.store.batch import Batch
from sylphx._server.store.records import AttemptRecord
from sylphx._server.store.schema import UsageDayRow

from .orgs import limits

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
    "billed",
)


def meter(machine: str, started_at: datetime, ended_at: datetime) -> tuple[float, float]:
    """(wall seconds, standard compute-seconds) of one attempt window."""
    wall = max((ended_at - started_at).total_seconds(), 0.0)
    return wall, wall * MACHINES[machine].units


def usage(
    attempt: AttemptRow | AttemptRecord,
    run: RunRow,
    *,
    ran: bool = True,
    machine: str | None = None,
    billed: bool = True,
) -> dict[str, object]:
    """The usage row of an ended attempt (see :func:`record`), at ``machine`` (default:
    the run's tier; the merge step's own); ``ran=False`` (the launch failed) bills zero,
    and so does an attempt that never started (it ended while it waited for a Ray node);
    ``billed=False``: a window the platform preempted, recorded but not billed."""
    assert attempt.ended_at is not None
    tier = machine or run.machine
    started = attempt.started_at or attempt.ended_at
    ended = attempt.ended_at if ran else started
    wall, compute = meter(tier, started, ended)
    return {
        "attempt_id": attempt.id,
        "org_id": run.org_id,
        "run_id": run.id,
        "machine": tier,
        "started_at": started,
        "ended_at": attempt.ended_at,
        "wall_seconds": wall,
        "units": MACHINES[tier].units,
        "compute_seconds": compute,
        "billed": billed,
    }


def record(s: Session, rows: list[dict[str, object]]) -> None:
    """Store the :func:`usage` rows of ended attempts: one executemany INSERT, not one
    ORM object (and statement) per attempt; and add them to their days' sums (one row per
    run and UTC day, see :func:`report`)."""
    conn = s.connection()
    _INSERT_USAGE.execute(conn, rows)
    days: dict[tuple[object, object, object, date], list[Any]] = {}
    for row in rows:
        ended = row["ended_at"]
        assert isinstance(ended, datetime)
        key = (row["org_id"], row["run_id"], row["machine"], ended.astimezone(UTC).date())
        sums = days.setdefault(key, [0.0, 0.0, 0.0])  # wall, billed, unbilled
        sums[0] += row["wall_seconds"]
        sums[1 if row.get("billed", True) else 2] += row["compute_seconds"]
    if days:
        conn.execute(
            _ADD_DAYS[conn.dialect.name],
            [
                {"org_id": org, "run_id": run, "machine": machine, "day": day.isoformat(),
                 "wall_seconds": wall, "compute_seconds": billed, "unbilled_seconds": unbilled}
                for (org, run, machine, day), (wall, billed, unbilled) in days.items()
            ],
        )  # fmt: skip


_USAGE: Table = UsageRow.__table__  # type: ignore[assignment]
_ATTEMPTS = AttemptRow.__table__
_DAYS: Table = UsageDayRow.__table__  # type: ignore[assignment]
_INSERT_USAGE = Batch(insert(_USAGE), USAGE_KEYS)
_DAY_KEY = ("org_id", "day", "run_id", "machine")


def _add_days(insert_: Callable[[Table], Any]) -> Any:
    """INSERT a day's sums, or add them to the sums already there (an upsert)."""
    stmt = insert_(_DAYS)
    return stmt.on_conflict_do_update(
        index_elements=list(_DAY_KEY),
        set_={
            "wall_seconds": _DAYS.c.wall_seconds + stmt.excluded.wall_seconds,
            "compute_seconds": _DAYS.c.compute_seconds + stmt.excluded.compute_seconds,
            "unbilled_seconds": _DAYS.c.unbilled_seconds + stmt.excluded.unbilled_seconds,
        },
    )


_ADD_DAYS = {"sqlite": _add_days(sqlite.insert), "postgresql": _add_days(postgresql.insert)}
_METERED = select(func.sum(_USAGE.c.compute_seconds)).where(
    _USAGE.c.run_id == bindparam("run_id"), _USAGE.c.billed.is_(True)
)
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
_GROUPS = (  # the usage rows of [lo, hi), by month, run and machine: a window's edges
    select(
        _Month(_USAGE.c.ended_at),
        _USAGE.c.run_id,
        _USAGE.c.machine,
        func.sum(_USAGE.c.wall_seconds),
        func.sum(case((_USAGE.c.billed, _USAGE.c.compute_seconds), else_=0.0)),
        func.sum(case((_USAGE.c.billed, 0.0), else_=_USAGE.c.compute_seconds)),
    )
    .where(_FROM_ORG, _USAGE.c.ended_at >= bindparam("lo"), _USAGE.c.ended_at < bindparam("hi"))
    .group_by(_Month(_USAGE.c.ended_at), _USAGE.c.run_id, _USAGE.c.machine)
)
_DAY_SUMS = select(  # the day sums of whole days [first, last), in key order, no sort
    func.substr(_DAYS.c.day, 1, 7),
    _DAYS.c.run_id,
    _DAYS.c.machine,
    _DAYS.c.wall_seconds,
    _DAYS.c.compute_seconds,
    _DAYS.c.unbilled_seconds,
).where(
    _DAYS.c.org_id == bindparam("org_id"),
    _DAYS.c.day >= bindparam("first"),
    _DAYS.c.day < bindparam("last"),
)


def _day(t: datetime) -> str:
    return t.astimezone(UTC).date().isoformat()


def _groups(s: Session, org_id: str, lo: datetime, hi: datetime) -> list[Any]:
    """The org's usage that ended in ``[lo, hi)`` as rows (month "YYYY-MM", run, machine,
    wall seconds, compute-seconds): its whole UTC days from their sums (``usage_days``),
    the partial days at either end from the usage rows."""
    first = datetime(lo.year, lo.month, lo.day, tzinfo=UTC)
    last = datetime(hi.year, hi.month, hi.day, tzinfo=UTC)
    if first < lo:
        if first == last:  # within one day (also the last day there is, 9999-12-31)
            return list(s.execute(_GROUPS, {"org_id": org_id, "lo": lo, "hi": hi}))
        first += timedelta(days=1)
    edges = [(lo, first)] if lo < first else []
    edges += [(last, hi)] if last < hi else []
    out: list[Any] = []
    for a, b in edges:
        out += s.execute(_GROUPS, {"org_id": org_id, "lo": a, "hi": b}).all()
    if first < last:
        days = {"org_id": org_id, "first": _day(first), "last": _day(last)}
        out += s.execute(_DAY_SUMS, days).all()
    return out


def report(s: Session, org: OrgRow, start: datetime, end: datetime) -> UsageReport:
    """Usage of ``org`` for attempts that ended in ``[start, end)``, with credits applied.

    A few queries whatever the window: its whole days from their sums by run and machine,
    the partial days at its edges from the usage rows grouped by month, run and machine,
    and likewise the first month's usage before ``start`` (credit it already used). Only
    days with usage are read, so a long empty range costs nothing."""
    credit = limits(org).monthly_credit_seconds
    by_month: dict[str, float] = defaultdict(float)
    by_run: dict[str, float] = defaultdict(float)
    by_machine: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    unbilled: dict[str, float] = defaultdict(float)  # preempted windows, by run
    for month, run_id, machine, wall, compute, lost in _groups(s, org.id, start, end):
        by_month[month] += compute
        by_run[run_id] += compute
        unbilled[run_id] += lost
        by_machine[machine][0] += wall
        by_machine[machine][1] += compute
    month_start = _month_start(start)
    before = 0.0
    if month_start < start:
        before = sum(g[4] for g in _groups(s, org.id, month_start, start))
    used = {month_start.strftime("%Y-%m"): before}
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
        unbilled_seconds=round(sum(unbilled.values()), 3),
        monthly_limit_seconds=org.monthly_limit_seconds,
        by_run=[
            UsageByRun(
                run_id=r, compute_seconds=round(c, 3), unbilled_seconds=round(unbilled[r], 3)
            )
            for r, c in sorted(by_run.items())
        ],
        by_machine=[
            UsageByMachine(machine=m, wall_seconds=round(w, 3), compute_seconds=round(c, 3))
            for m, (w, c) in sorted(by_machine.items())
        ],
    )
