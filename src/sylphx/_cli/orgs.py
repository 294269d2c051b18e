"""``sylphx admin``: operator commands that work on the store directly (orgs, keys).

They read the same settings as the server (``SYLPHX_DATABASE_URL`` / ``SYLPHX_HOME``):
whoever can reach the database administers the platform.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from .admin import admin_migrate
from .common import Group, echo_json

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from sylphx._server.store import ApiKeyRow, OrgRow

PLANS = click.Choice(["free", "pro", "team", "enterprise"])


@contextmanager
def _store() -> Iterator[Session]:
    from sylphx._server.store import make_engine, migrate, session_factory
    from sylphx._settings import Settings

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    try:
        with session_factory(engine).begin() as s:
            yield s
    finally:
        engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


def _org_wire(row: OrgRow) -> dict[str, Any]:
    """An org with its effective limits, as ``--json`` prints it."""
    from sylphx._server.tenancy import orgs

    lim = orgs.limits(row)
    return {
        "id": row.id,
        "name": row.name,
        "plan": row.plan,
        "maxParallelism": lim.max_parallelism,
        "concurrentShards": lim.concurrent_shards,
        "monthlyCreditSeconds": lim.monthly_credit_seconds,
        "monthlyLimitSeconds": row.monthly_limit_seconds,
    }


def _key_wire(row: ApiKeyRow) -> dict[str, Any]:
    """A key's record (never the key), as ``--json`` prints it."""
    return {
        "id": row.id,
        "orgId": row.org_id,
        "name": row.name,
        "prefix": row.prefix,
        "state": "revoked" if row.revoked_at else "active",
        "createdAt": row.created_at.isoformat(),
        "revokedAt": row.revoked_at.isoformat() if row.revoked_at else None,
    }


@click.group(cls=Group)
def admin() -> None:
    """Operator commands on the store (SYLPHX_DATABASE_URL / SYLPHX_HOME): orgs, API keys,
    migrations."""


admin.add_command(admin_migrate)


@admin.group(cls=Group)
def org() -> None:
    """Create, list and change orgs."""


@org.command("create")
@click.argument("name")
@click.option("--plan", type=PLANS, default="free", show_default=True)
@click.option("--concurrent-shards", type=click.IntRange(1), help="Override the plan's budget.")
@click.option("--monthly-credit", type=click.FloatRange(0), help="Standard compute-seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the org and its limits as JSON.")
def org_create(
    name: str, plan: str, concurrent_shards: int | None, monthly_credit: float | None, as_json: bool
) -> None:
    """Create an org NAME on a plan and print its id.

    \b
    Examples:
      sylphx admin org create acme --plan pro
      sylphx admin org create lab --plan team --concurrent-shards 64 --json
    """
    from sylphx._server.tenancy import orgs

    with _store() as s:
        row = orgs.create_org(
            s,
            name,
            plan=plan,
            now=_now(),
            concurrent_shards=concurrent_shards,
            monthly_credit_seconds=monthly_credit,
        )
        if as_json:
            s.flush()
            echo_json(_org_wire(row))
        else:
            click.echo(row.id)


@org.command("set")
@click.argument("ref")
@click.option("--plan", type=PLANS)
@click.option("--concurrent-shards", type=click.IntRange(0), help="0 resets to the plan's.")
@click.option("--monthly-credit", type=float, help="A negative value resets to the plan's.")
@click.option(
    "--monthly-limit",
    type=float,
    help="Refuse new runs (402) once billable compute-seconds this month reach it; -1: none.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the org and its limits as JSON.")
def org_set(
    ref: str,
    plan: str | None,
    concurrent_shards: int | None,
    monthly_credit: float | None,
    monthly_limit: float | None,
    as_json: bool,
) -> None:
    """Change an org's plan or budgets (REF is its id or name).

    \b
    Examples:
      sylphx admin org set acme --plan team
      sylphx admin org set acme --monthly-limit 720000 --json
    """
    from sylphx._server.tenancy import orgs

    with _store() as s:
        row = orgs.update_org(
            s,
            ref,
            plan=plan,
            concurrent_shards=concurrent_shards,
            monthly_credit_seconds=monthly_credit,
            monthly_limit_seconds=monthly_limit,
        )
        if as_json:
            echo_json(_org_wire(row))
            return
        lim = orgs.limits(row)
        cap = row.monthly_limit_seconds
        click.echo(
            f"{row.name}: plan {row.plan}, {lim.max_parallelism} shard(s) per job,"
            f" {lim.concurrent_shards} concurrent, {lim.monthly_credit_seconds:,.0f}"
            " credit-seconds a month, "
            + (f"a limit of {cap:,.0f} billable a month" if cap is not None else "no spend limit")
        )


@org.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the orgs and their limits as JSON.")
def org_list(as_json: bool) -> None:
    """Every org with its effective limits.

    \b
    Examples:
      sylphx admin org list
      sylphx admin org list --json | jq -r '.[].name'
    """
    from sylphx._server.tenancy import orgs

    with _store() as s:
        data = [_org_wire(o) for o, _ in orgs.list_orgs(s)]
    if as_json:
        echo_json(data)
        return
    click.echo(f"{'ID':<22}{'NAME':<20}{'PLAN':<12}{'PER-JOB':>8}{'CONCURRENT':>12}")
    for d in data:
        click.echo(
            f"{d['id']:<22}{d['name']:<20}{d['plan']:<12}{d['maxParallelism']:>8}"
            f"{d['concurrentShards']:>12}"
        )


def _policy_line(name: str, policy: dict[str, Any] | None) -> str:
    """An org's image policy in words."""
    if not policy:
        return f"{name}: no image policy (any image is admitted)"
    parts = [
        "images from " + ", ".join(policy["allowedSources"]) + " only"
        if policy.get("allowedSources")
        else "images from any source",
        "pinned by digest" if policy.get("requireDigest") else "tags allowed",
    ]
    if policy.get("denyDigests"):
        parts.append(f"{len(policy['denyDigests'])} digest(s) denied")
    return f"{name}: " + "; ".join(parts)


@org.command("policy")
@click.argument("ref")
@click.option(
    "--allow-source",
    "sources",
    multiple=True,
    help="Allowed image reference prefix (repeatable), e.g. ghcr.io/acme/ or oci:/srv/.",
)
@click.option(
    "--require-digest/--no-require-digest",
    default=None,
    help="Require images pinned as NAME@sha256:....",
)
@click.option("--deny-digest", "deny", multiple=True, help="A manifest digest to refuse.")
@click.option("--clear", is_flag=True, help="Remove the policy (any image is admitted).")
@click.option("--json", "as_json", is_flag=True, help="Print the org's policy as JSON.")
def org_policy(
    ref: str,
    sources: tuple[str, ...],
    require_digest: bool | None,
    deny: tuple[str, ...],
    clear: bool,
    as_json: bool,
) -> None:
    """Set an org's image admission policy (what is not given is kept), then show it.

    \b
    Examples:
      sylphx admin org policy acme --allow-source ghcr.io/acme/ --require-digest
      sylphx admin org policy acme --json            # show it, unchanged
      sylphx admin org policy acme --clear
    """
    from sylphx._server.images.policy import ImagePolicy
    from sylphx._server.tenancy import orgs

    with _store() as s:
        row = orgs.find_org(s, ref)
        current = ImagePolicy() if clear else ImagePolicy.model_validate(row.image_policy or {})
        if sources:
            current.allowed_sources = list(sources)
        if require_digest is not None:
            current.require_digest = require_digest
        if deny:
            current.deny_digests = sorted({*current.deny_digests, *deny})
        empty = clear or current == ImagePolicy()  # stored as none: any image is admitted
        row.image_policy = None if empty else current.model_dump(by_alias=True)
        if as_json:
            echo_json({"id": row.id, "name": row.name, "imagePolicy": row.image_policy})
        else:
            click.echo(_policy_line(row.name, row.image_policy))


@admin.group(cls=Group)
def key() -> None:
    """Create, list and revoke API keys (only their hashes are stored)."""


@key.command("create")
@click.option("--org", "org_ref", required=True, help="Org id or name.")
@click.option("--name", help="A label for the key.")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its id as JSON.")
def key_create(org_ref: str, name: str | None, as_json: bool) -> None:
    """Create a key; it is printed once and cannot be shown again.

    \b
    Examples:
      sylphx admin key create --org acme --name ci
      KEY=$(sylphx admin key create --org acme --json | jq -r .key)
    """
    from sylphx._server.tenancy import orgs

    with _store() as s:
        row, token = orgs.create_key(s, org_ref, name=name, now=_now())
        click.echo(
            f"created {row.id} for org {org_ref}; store it now, it is not shown again:", err=True
        )
        if as_json:
            echo_json({**_key_wire(row), "key": token})
        else:
            click.echo(token)


@key.command("list")
@click.option("--org", "org_ref", help="Only this org (id or name).")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
def key_list(org_ref: str | None, as_json: bool) -> None:
    """Keys by id, prefix and state (never the key itself)."""
    from sylphx._server.tenancy import orgs

    with _store() as s:
        if as_json:
            echo_json([_key_wire(k) for k in orgs.list_keys(s, org_ref)])
            return
        click.echo(f"{'ID':<22}{'ORG':<22}{'PREFIX':<12}{'NAME':<16}STATE")
        for k in orgs.list_keys(s, org_ref):
            status = "revoked" if k.revoked_at else "active"
            click.echo(f"{k.id:<22}{k.org_id:<22}{k.prefix + '…':<12}{k.name or '':<16}{status}")


@key.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print the key's record as JSON.")
def key_revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key; API servers refuse it within SYLPHX_AUTH_CACHE_SECONDS (default 1 s).

    \b
    Examples:
      sylphx admin key revoke key_01m87…
      sylphx admin key revoke key_01m87… --json | jq .revokedAt
    """
    from sylphx._server.tenancy import orgs

    with _store() as s:
        row = orgs.revoke_key(s, key_id, _now())
        if as_json:
            echo_json(_key_wire(row))
        else:
            click.echo(f"revoked {key_id}")
