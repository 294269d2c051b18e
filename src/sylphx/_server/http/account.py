"""``/v1/org`` and ``/v1/usage``: the caller's org, its limits and its metered usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from sylphx._core.views import OrgView, UsageReport
from sylphx._server.runs import service as runs
from sylphx._server.store import OrgRow
from sylphx._server.tenancy import billing, orgs

from .deps import Org, Plane

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/org", response_model=OrgView)
def get_org(org_id: Org, plane: Plane) -> OrgView:
    """The org behind the key: its plan's limits and the shards it holds now."""
    with plane.reads() as s:
        org = s.get(OrgRow, org_id)
        assert org is not None
        plan = orgs.limits(org)
        return OrgView(
            id=org.id,
            name=org.name,
            plan=org.plan,
            max_parallelism=plan.max_parallelism,
            concurrent_shards=plan.concurrent_shards,
            shards_in_use=runs.shards_in_use(s, org.id),
            monthly_credit_seconds=plan.monthly_credit_seconds,
        )


@router.get("/v1/usage", response_model=UsageReport)
def get_usage(
    org_id: Org,
    plane: Plane,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
) -> UsageReport:
    """Compute-seconds by run and machine tier over [from, to) (default: this month so
    far), the monthly credits applied first, and the billable remainder."""
    start, end = billing.window(from_, to, plane.now())  # 422 unless a bounded range
    with plane.reads() as s:
        org = s.get(OrgRow, org_id)
        assert org is not None
        return billing.report(s, org, start, end)
