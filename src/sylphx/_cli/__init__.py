"""The ``sylphx`` command line: run, runs, volumes, usage, login, secrets, server, local, admin."""

from __future__ import annotations

import click

from .account import login, usage
from .admin import local, server, volumes
from .common import Group, State
from .orgs import admin
from .run_cmd import run
from .runs import runs
from .secrets_cmd import secrets

__all__ = ["cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="SYLPHX_URL",
    help="Control plane URL (http(s):// or unix://); default: the embedded local one.",
)
@click.version_option(package_name="sylphx", prog_name="sylphx")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """Self-hosted Distributed Batch Compute: one command, N indexed shards."""
    st = ctx.ensure_object(State)
    st.url = url or None
    ctx.call_on_close(st.close)


cli.add_command(run)
cli.add_command(runs)
cli.add_command(volumes)
cli.add_command(server)
cli.add_command(local)
cli.add_command(login)
cli.add_command(usage)
cli.add_command(admin)
cli.add_command(secrets)


def main() -> None:
    """Console-script entry point."""
    cli()
