"""``sylphx secrets``: the org's scoped secrets (values go in, never come out)."""

from __future__ import annotations

import sys

import click

from sylphx._client.resources import SecretsClient

from .common import Group, echo_json, state


@click.group(cls=Group)
def secrets() -> None:
    """Scoped secrets, encrypted at rest; runs name them with --secret NAME."""


@secrets.command("set")
@click.argument("name")
@click.option("--value", help="The value (default: read from standard input, or prompted).")
def secret_set(name: str, value: str | None) -> None:
    """Create or replace secret NAME."""
    if value is None:
        if sys.stdin.isatty():
            value = click.prompt(f"value of {name}", hide_input=True)
        else:
            value = sys.stdin.read().rstrip("\n")
    view = SecretsClient.set(state().config(), name, value)
    click.echo(f"secret {view.name} stored")


@secrets.command("list")
@click.option("--json", "as_json", is_flag=True)
def secret_list(as_json: bool) -> None:
    """Secret names (never values)."""
    items = SecretsClient.list(state().config())
    if as_json:
        echo_json([i.to_wire() for i in items])
        return
    for item in items:
        click.echo(f"{item.name:<32} updated {item.updated_at:%Y-%m-%d %H:%M}")


@secrets.command("delete")
@click.argument("name")
def secret_delete(name: str) -> None:
    """Delete secret NAME."""
    SecretsClient.delete(state().config(), name)
    click.echo(f"deleted {name}")
