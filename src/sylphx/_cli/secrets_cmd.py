"""``sylphx secrets``: the org's scoped secrets (values go in, never come out)."""

from __future__ import annotations

import sys

import click

from sylphx._client.resources import SecretsClient

from .common import Group, echo_json, state


@click.group(cls=Group)
def secrets() -> None:
    """Scoped secrets, encrypted at rest; runs name them with --secret NAME.

    \b
    Examples:
      printf %s "$HF_TOKEN" | sylphx secrets set HF_TOKEN
      sylphx secrets list --json
      sylphx run --secret HF_TOKEN -- python fetch.py
      sylphx secrets delete HF_TOKEN
    """


@secrets.command("set")
@click.argument("name")
@click.option("--value", help="The value (default: read from standard input, or prompted).")
@click.option("--json", "as_json", is_flag=True, help="Print the secret (never its value).")
def secret_set(name: str, value: str | None, as_json: bool) -> None:
    """Create or replace secret NAME.

    \b
    Examples:
      sylphx secrets set DB_PASSWORD              # prompted, not echoed
      printf %s "$TOKEN" | sylphx secrets set API_TOKEN --json
    """
    if value is None:
        if sys.stdin.isatty():
            value = click.prompt(f"value of {name}", hide_input=True)
        else:
            value = sys.stdin.read().rstrip("\n")
    view = SecretsClient.set(state().config(), name, value)
    if as_json:
        echo_json(view.to_wire())
    else:
        click.echo(f"secret {view.name} stored")


@secrets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the secrets as JSON.")
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
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": NAME}.')
def secret_delete(name: str, as_json: bool) -> None:
    """Delete secret NAME; runs that name it can no longer start."""
    SecretsClient.delete(state().config(), name)
    if as_json:
        echo_json({"deleted": name})
    else:
        click.echo(f"deleted {name}")
