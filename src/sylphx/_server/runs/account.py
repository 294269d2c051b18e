"""The org-scoped services beside runs that the HTTP edge calls: who a key belongs to,
the org and its metered usage (:class:`AccountService`), and its secrets
(:class:`SecretService`). Each is built by the control plane from explicit parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from sylphx._core.views import OrgView, SecretView, UsageReport
from sylphx._server.store import OrgRow
from sylphx._server.tenancy import billing, orgs, secrets, spend

from . import service
from .readcache import KeyCache

__all__ = ["AccountService", "SecretService"]


@dataclass(frozen=True, kw_only=True, eq=False)
class AccountService:
    """API keys to orgs (through ``keys``, a short-lived cache), the org's view and its
    usage report; ``reads`` are read-only sessions."""

    reads: sessionmaker[Session]
    keys: KeyCache
    now: Callable[[], datetime]

    async def authenticate(self, authorization: str | None) -> str:
        """The org id behind ``Authorization: Bearer <key>`` (Unauthorized otherwise). A
        key's store lookup is reused for ``SYLPHX_AUTH_CACHE_SECONDS`` (see
        :mod:`.readcache`); the lookup runs in the thread pool."""
        key_hash = orgs.bearer_hash(authorization)
        org_id = self.keys.get(key_hash)
        if org_id is None:
            checked_at = self.keys.now()
            org_id = await run_in_threadpool(self._org_of_key, key_hash)
            self.keys.put(key_hash, org_id, checked_at)
        return org_id

    def _org_of_key(self, key_hash: str) -> str:
        with self.reads() as s:
            return orgs.org_of_key(s, key_hash)

    def org(self, org_id: str) -> OrgView:
        """The org: its plan's limits and the shards it holds now."""
        with self.reads() as s:
            org = s.get(OrgRow, org_id)
            assert org is not None
            plan = orgs.limits(org)
            return OrgView(
                id=org.id,
                name=org.name,
                plan=org.plan,
                max_parallelism=plan.max_parallelism,
                concurrent_shards=plan.concurrent_shards,
                shards_in_use=service.shards_in_use(s, org.id),
                monthly_credit_seconds=plan.monthly_credit_seconds,
                monthly_limit_seconds=org.monthly_limit_seconds,
                billable_seconds_this_month=spend.billable_this_month(s, org, self.now()),
            )

    def usage(self, org_id: str, start: datetime | None, end: datetime | None) -> UsageReport:
        """Compute-seconds by run and machine tier over [start, end) (default: this month
        so far), the monthly credits applied first, and the billable remainder.
        ValidationError unless the range is bounded."""
        start, end = billing.window(start, end, self.now())
        with self.reads() as s:
            org = s.get(OrgRow, org_id)
            assert org is not None
            return billing.report(s, org, start, end)


@dataclass(frozen=True, kw_only=True, eq=False)
class SecretService:
    """The org's secrets, sealed with ``cipher``; values never leave but to shards."""

    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    cipher: Fernet
    now: Callable[[], datetime]

    def put(self, org_id: str, name: str, value: str) -> tuple[SecretView, bool]:
        """Create or replace a secret: its view, and whether it was created."""
        with self.sessions.begin() as s:
            created = secrets.put(s, org_id, name, value, self.cipher, self.now())
        with self.reads() as s:
            return next(v for v in secrets.list_all(s, org_id) if v.name == name), created

    def list_all(self, org_id: str) -> list[SecretView]:
        """Names and times of every secret of the org."""
        with self.reads() as s:
            return secrets.list_all(s, org_id)

    def delete(self, org_id: str, name: str) -> None:
        """Delete a secret (NotFound if there is none of that name)."""
        with self.sessions.begin() as s:
            secrets.delete(s, org_id, name)
