"""Orgs and API keys: creation, lookup, authentication, and the embedded local org."""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
from datetime import datetime
from pathlib import Path

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from sylphx._core.errors import ConflictError, NotFound, Unauthorized, ValidationError
from sylphx._core.ids import new_id
from sylphx._server.store import ApiKeyRow, OrgRow

from .plans import PLAN_NAMES, PLANS, Plan

__all__ = [
    "OrgRow",
    "bearer_hash",
    "bootstrap_local",
    "create_key",
    "create_org",
    "find_org",
    "limits",
    "org_of_key",
    "revoke_key",
    "update_org",
]

KEY_PREFIX = "sx_"
LOCAL_ORG_ID = "org_local"
_HOW = "Fix: send `Authorization: Bearer <key>` (SDK/CLI: set SYLPHX_TOKEN or `sylphx login`)."
_ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def hash_key(token: str) -> str:
    """SHA-256 of a key: keys are 256-bit random, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def limits(org: OrgRow) -> Plan:
    """The org's effective limits: its plan, with the operator's overrides."""
    plan = PLANS[org.plan]
    return Plan(
        name=plan.name,
        max_parallelism=plan.max_parallelism,
        concurrent_shards=org.concurrent_shards or plan.concurrent_shards,
        monthly_credit_seconds=(
            plan.monthly_credit_seconds
            if org.monthly_credit_seconds is None
            else org.monthly_credit_seconds
        ),
    )


def _check_plan(plan: str) -> None:
    if plan not in PLANS:
        raise ValidationError(
            f"plan: {plan!r} is not a plan. Fix: use one of {', '.join(PLAN_NAMES)}.",
            details=[{"field": "plan", "rule": "unknown plan", "fix": ", ".join(PLAN_NAMES)}],
        )


def create_org(
    s: Session,
    name: str,
    *,
    plan: str,
    now: datetime,
    concurrent_shards: int | None = None,
    monthly_credit_seconds: float | None = None,
    org_id: str | None = None,
) -> OrgRow:
    """A new org; the name is lower-case letters, digits and dashes, and unique."""
    if not _ORG_NAME.match(name):
        raise ValidationError(
            f"name: {name!r} is not a valid org name. Fix: use lower-case letters, digits and"
            " dashes (up to 63), e.g. acme-research.",
            details=[{"field": "name", "rule": "invalid org name", "fix": "e.g. acme-research"}],
        )
    _check_plan(plan)
    if s.scalars(select(OrgRow).where(OrgRow.name == name)).first() is not None:
        raise ConflictError(f"org {name!r} already exists. Fix: pick another name.")
    org = OrgRow(
        id=org_id or new_id("org"),
        name=name,
        plan=plan,
        created_at=now,
        concurrent_shards=concurrent_shards,
        monthly_credit_seconds=monthly_credit_seconds,
    )
    s.add(org)
    s.flush()
    return org


def update_org(
    s: Session,
    ref: str,
    *,
    plan: str | None = None,
    concurrent_shards: int | None = None,
    monthly_credit_seconds: float | None = None,
    monthly_limit_seconds: float | None = None,
) -> OrgRow:
    """Change an org's plan or its operator overrides (0 resets an override; a negative
    ``monthly_limit_seconds`` removes the spend limit)."""
    org = find_org(s, ref)
    if plan is not None:
        _check_plan(plan)
        org.plan = plan
    if concurrent_shards is not None:
        org.concurrent_shards = concurrent_shards or None
    if monthly_credit_seconds is not None:
        org.monthly_credit_seconds = monthly_credit_seconds if monthly_credit_seconds >= 0 else None
    if monthly_limit_seconds is not None:
        if not math.isfinite(monthly_limit_seconds):
            fix = "give the limit in standard compute-seconds, e.g. 2000000, or -1 for none"
            raise ValidationError(
                f"monthly limit: {monthly_limit_seconds} is not a number of seconds. Fix: {fix}.",
                details=[{"field": "monthlyLimitSeconds", "rule": "must be finite", "fix": fix}],
            )
        org.monthly_limit_seconds = monthly_limit_seconds if monthly_limit_seconds >= 0 else None
    return org


def find_org(s: Session, ref: str) -> OrgRow:
    """An org by id or name."""
    org = s.scalars(select(OrgRow).where(or_(OrgRow.id == ref, OrgRow.name == ref))).first()
    if org is None:
        raise NotFound(f"org {ref!r} not found. Fix: list orgs with `sylphx admin org list`.")
    return org


def list_orgs(s: Session) -> list[tuple[OrgRow, Plan]]:
    """Every org, by name, with its effective limits."""
    return [(o, limits(o)) for o in s.scalars(select(OrgRow).order_by(OrgRow.name))]


def list_keys(s: Session, org_ref: str | None = None) -> list[ApiKeyRow]:
    """The keys (of one org, by id or name), oldest first; never the key itself."""
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
    if org_ref:
        query = query.where(ApiKeyRow.org_id == find_org(s, org_ref).id)
    return list(s.scalars(query))


def create_key(
    s: Session, org_ref: str, *, name: str | None, now: datetime
) -> tuple[ApiKeyRow, str]:
    """A new API key for the org; the plain key is returned once and never stored."""
    org = find_org(s, org_ref)
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id=new_id("key"),
        org_id=org.id,
        name=name,
        prefix=token[:10],
        hash=hash_key(token),
        created_at=now,
    )
    s.add(row)
    s.flush()
    return row, token


def revoke_key(s: Session, key_id: str, now: datetime) -> ApiKeyRow:
    row = s.get(ApiKeyRow, key_id)
    if row is None:
        raise NotFound(f"key {key_id!r} not found. Fix: list keys with `sylphx admin key list`.")
    row.revoked_at = row.revoked_at or now
    return row


def bearer_hash(authorization: str | None) -> str:
    """The key hash of an ``Authorization: Bearer <key>`` header, or Unauthorized."""
    if not authorization:
        raise Unauthorized(f"missing API key. {_HOW}")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(f"the Authorization header is not a Bearer key. {_HOW}")
    return hash_key(token.strip())


_KEY = select(ApiKeyRow.org_id, ApiKeyRow.revoked_at).where(
    ApiKeyRow.hash == bindparam("hash")
)  # built once: every request runs it


def org_of_key(s: Session, key_hash: str) -> str:
    """The org id of the live key with this hash, or Unauthorized (unknown or revoked)."""
    row = s.execute(_KEY, {"hash": key_hash}).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized(f"unknown or revoked API key. {_HOW}")
    return str(row.org_id)


def bootstrap_local(s: Session, token_file: Path, now: datetime) -> None:
    """The embedded default needs no set-up: a ``local`` org and a key in ``token_file``
    (mode 0600), created on first start and reused afterwards."""
    org = s.get(OrgRow, LOCAL_ORG_ID)
    if org is None:
        org = create_org(s, "local", plan="enterprise", now=now, org_id=LOCAL_ORG_ID)
    if token_file.exists():
        token = token_file.read_text().strip()
        row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.hash == hash_key(token))).first()
        if row is not None and row.revoked_at is None:
            return
    _, token = create_key(s, org.id, name="embedded", now=now)
    tmp = token_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, token_file)
