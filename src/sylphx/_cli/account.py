"""``sylphx login`` and ``sylphx usage``: the caller's key, org and metered compute."""

from __future__ import annotations

from datetime import datetime

import click

from sylphx._client.credentials import save_token
from sylphx._client.resources import UsageClient
from sylphx._client.transport import create_client

from .common import echo_json, state


@click.command()
@click.option("--token", prompt="API key", hide_input=True, help="The API key (prompted).")
def login(token: str) -> None:
    """Check an API key against the control plane (--url / SYLPHX_URL) and remember it."""
    url = state().url
    if not url:
        raise click.UsageError("login needs the control plane's URL: sylphx --url URL login")
    config = create_client(url, token=token.strip())
    try:
        org = UsageClient.org(config)
    finally:
        config.close()
    path = save_token(url, token.strip())
    click.echo(f"logged in to {url} as org {org.name} ({org.plan}); key stored in {path}")


@click.command()
@click.option("--from", "from_", type=click.DateTime(), help="Start (UTC) [default: month start].")
@click.option("--to", type=click.DateTime(), help="End (UTC) [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the usage report as JSON.")
def usage(from_: datetime | None, to: datetime | None, as_json: bool) -> None:
    """Compute-seconds by run and machine tier, credits applied, billable seconds."""
    rep = UsageClient.report(state().config(), from_, to)
    if as_json:
        echo_json(rep.to_wire())
        return
    click.echo(f"org {rep.org} ({rep.plan})  {rep.from_:%Y-%m-%d %H:%M} .. {rep.to:%Y-%m-%d %H:%M}")
    click.echo(f"compute-seconds   {rep.compute_seconds:,.1f}")
    click.echo(
        f"credits applied   {rep.credits_applied:,.1f}"
        f"   (monthly credit {rep.monthly_credit_seconds:,.0f})"
    )
    click.echo(f"billable seconds  {rep.billable_seconds:,.1f}")
    if rep.unbilled_seconds:
        click.echo(f"preempted, unbilled {rep.unbilled_seconds:,.1f}")
    if rep.monthly_limit_seconds is not None:
        click.echo(f"monthly limit     {rep.monthly_limit_seconds:,.0f} billable compute-seconds")
    if rep.by_machine:
        click.echo("\nMACHINE      WALL-SECONDS  COMPUTE-SECONDS")
        for m in rep.by_machine:
            click.echo(f"{m.machine:<12} {m.wall_seconds:>12,.1f}  {m.compute_seconds:>15,.1f}")
    if rep.by_run:
        click.echo("\nRUN                   COMPUTE-SECONDS")
        for r in rep.by_run:
            click.echo(f"{r.run_id:<21} {r.compute_seconds:>15,.1f}")
