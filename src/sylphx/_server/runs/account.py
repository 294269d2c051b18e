"""The org-scoped services beside runs that the HTTP edge calls: who a key belongs to,
the org, its keys (names and dates) and its metered usage (:class:`AccountService`), and
its secrets (:class:`SecretService`). Each is built by the control plane from explicit
parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from sylphx._core.errors import Unauthorized
from sylphx._core.views import OrgView, SecretView, UsageReport
from sylphx._server.store import ApiKeyRow, OrgRow
from sylphx._server.store.schema import SignOutRow
from sylphx._server.tenancy import billing, orgs, secrets, spend

from . import service
from .readcache import KeyCache

__all__ = ["AccountService", "KeyEntry", "SecretService", "SignOuts"]

_KEY_COLUMNS = (ApiKeyRow.id, ApiKeyRow.org_id, ApiKeyRow.revoked_at)
_BY_HASH = select(*_KEY_COLUMNS).where(ApiKeyRow.hash == bindparam("hash"))
_BY_ID = select(*_KEY_COLUMNS).where(ApiKeyRow.id == bindparam("id"))
_ID = "id:"


@dataclass(frozen=True)
class KeyEntry:
    """One API key of an org as the dashboard lists it: never the key, nor a part."""

    name: str
    created_at: datetime
    revoked_at: datetime | None


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
        return await self.org_of_hash(self.key_hash(authorization))

    @staticmethod
    def key_hash(authorization: str | None) -> str:
        """The stored hash of the key in ``Authorization: Bearer <key>`` (Unauthorized
        when there is none)."""
        return orgs.bearer_hash(authorization)

    async def org_of_hash(self, key_hash: str) -> str:
        """The org of the live key with this stored hash (Unauthorized for an unknown or
        revoked one), through the same cache: the dashboard's session check."""
        org_id = self.keys.get(key_hash)
        if org_id is None:
            checked_at = self.keys.now()
            org_id = await run_in_threadpool(self._org_of_key, key_hash)
            self.keys.put(key_hash, org_id, checked_at)
        return org_id

    def _org_of_key(self, key_hash: str) -> str:
        with self.reads() as s:
            return orgs.org_of_key(s, key_hash)

    async def key_of_hash(self, key_hash: str) -> tuple[str, str]:
        """The id and org of the live key with this stored hash (Unauthorized for an
        unknown or revoked one): the dashboard's sign-in, which keeps the id, not the hash."""
        return await run_in_threadpool(self._key_of_hash, key_hash)

    def _key_of_hash(self, key_hash: str) -> tuple[str, str]:
        with self.reads() as s:
            row = s.execute(_BY_HASH, {"hash": key_hash}).first()
        if row is None or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key")
        return str(row.id), str(row.org_id)

    async def org_of_key_id(self, key_id: str) -> str:
        """The org of the live key with this id (Unauthorized for an unknown or revoked
        one), through the key cache: the dashboard's session check."""
        cached = _ID + key_id  # never a hash (hex): the cache's entries do not collide
        org_id = self.keys.get(cached)
        if org_id is None:
            checked_at = self.keys.now()
            org_id = await run_in_threadpool(self._org_of_key_id, key_id)
            self.keys.put(cached, org_id, checked_at)
        return org_id

    def _org_of_key_id(self, key_id: str) -> str:
        with self.reads() as s:
            row = s.execute(_BY_ID, {"id": key_id}).first()
        if row is None or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key")
        return str(row.org_id)

    @staticmethod
    def hash_of(key: str) -> str:
        """The stored hash of a key as typed (a sign-in form's)."""
        return orgs.hash_key(key)

    def list_keys(self, org_id: str) -> list[KeyEntry]:
        """The org's keys, oldest first: names, created and revoked times."""
        with self.reads() as s:
            return [
                KeyEntry(name=k.name or "", created_at=k.created_at, revoked_at=k.revoked_at)
                for k in orgs.list_keys(s, org_id)
            ]

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
class SignOuts:
    """The dashboard's signed-out sessions, by nonce, kept in the store until their
    cookies would have expired: every API process of the home sees a sign-out at once."""

    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    now: Callable[[], datetime]

    def end(self, nonce: str, expires: datetime) -> None:
        """Sign the session with ``nonce`` out (expiring at ``expires``); the sign-outs
        already past their expiry are dropped."""
        now = self.now()
        try:
            with self.sessions.begin() as s:
                s.execute(delete(SignOutRow).where(SignOutRow.expires_at <= now))
                if s.get(SignOutRow, nonce) is None:
                    s.add(SignOutRow(nonce=nonce, expires_at=max(expires, now)))
        except IntegrityError:  # signed out twice at once: it is signed out
            pass

    def ended(self, nonce: str) -> bool:
        """Whether the session with ``nonce`` was signed out."""
        with self.reads() as s:
            return s.get(SignOutRow, nonce) is not None


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
