"""``/v1/org`` and ``/v1/usage``: the caller's org, its limits and its metered usage, over
:class:`~sylphx._server.runs.account.AccountService`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from sylphx._core.views import OrgView, UsageReport

from .deps import Account, Org

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/org", response_model=OrgView)
def get_org(org_id: Org, account: Account) -> OrgView:
    """The org behind the key: its plan's limits and the shards it holds now."""
    return account.org(org_id)


@router.get("/v1/usage", response_model=UsageReport)
def get_usage(
    org_id: Org,
    account: Account,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
) -> UsageReport:
    """Compute-seconds by run and machine tier over [from, to) (default: this month so
    far), the monthly credits applied first, and the billable remainder."""
    return account.usage(org_id, from_, to)  # 422 unless a bounded range
