"""An org's monthly spend limit (``sylphx admin org set ORG --monthly-limit CS``): once its
billable compute-seconds this month (after its monthly credit; running attempts' open
windows counted) reach the limit, new runs and retries are refused with HTTP 402; runs
already running finish, and runs already queued still start (they were accepted)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from sylphx._core.errors import SpendLimitReached
from sylphx._server.store import AttemptRow, OrgRow, RunRow

from . import billing


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def next_month(now: datetime) -> datetime:
    return datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)


_LIVE = (  # the org's open attempt windows, few groups: a pass starts many at once
    select(AttemptRow.started_at, RunRow.machine, func.count())
    .join(RunRow, RunRow.id == AttemptRow.run_id)
    .where(
        RunRow.org_id == bindparam("org_id"),
        AttemptRow.ended_at.is_(None),
        AttemptRow.started_at.is_not(None),
    )
    .group_by(AttemptRow.started_at, RunRow.machine)
)


def billable_this_month(s: Session, org: OrgRow, now: datetime) -> float:
    """The org's billable compute-seconds this month so far, its running attempts' open
    windows included (its credit applied first)."""
    month = billing.report(s, org, month_start(now), now)
    since = month_start(now)
    live = sum(
        billing.meter(machine, max(started, since), now)[1] * n
        for started, machine, n in s.execute(_LIVE, {"org_id": org.id})
        if started is not None
    )
    return round(max(month.compute_seconds + live - month.monthly_credit_seconds, 0.0), 3)


def check(s: Session, org: OrgRow, now: datetime) -> None:
    """Refuse (SpendLimitReached, 402) a new run of an org at its monthly limit."""
    limit = org.monthly_limit_seconds
    if limit is None:
        return
    used = billable_this_month(s, org, now)
    if used < limit:
        return
    resets = f"{next_month(now):%Y-%m-%d} 00:00 UTC"
    fix = (
        f"wait for the limit to reset on {resets}, or ask an operator to raise it"
        f" (sylphx admin org set {org.name} --monthly-limit CS); running runs finish"
    )
    raise SpendLimitReached(
        f"org {org.name} has used {used:,.1f} billable compute-seconds this month, reaching its"
        f" monthly limit of {limit:,.0f}, so it cannot start new runs. Fix: {fix}.",
        details=[
            {
                "field": "org",
                "limit": "monthlyLimitSeconds",
                "max": limit,
                "current": round(used, 3),
                "rule": f"at most {limit:,.0f} billable compute-seconds a month",
                "fix": fix,
            }
        ],
    )
