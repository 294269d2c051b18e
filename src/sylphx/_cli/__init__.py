"""The ``sylphx`` command line: run, runs, volumes, usage, login, contexts, secrets, server,
local, ui, admin, completion."""

from __future__ import annotations

import click

from .account import login, logout, usage, whoami
from .admin import local, server, volumes
from .common import EXIT_CODES_HELP, Group, State
from .completion import COMPLETE_VAR, PROG_NAME, completion
from .contexts import context
from .orgs import admin
from .run_cmd import run
from .runs import runs
from .secrets_cmd import secrets
from .ui import ui

__all__ = ["cli", "main"]


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP
)
@click.option(
    "--url",
    metavar="URL",
    help="Control plane URL (http(s):// or unix://) [default: $SYLPHX_URL, else the current"
    " context's, else the embedded local one].",
)
@click.version_option(package_name="sylphx", prog_name="sylphx")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """Self-hosted Distributed Batch Compute: one command, N indexed shards."""
    st = ctx.ensure_object(State)
    st.url = url or None
    ctx.call_on_close(st.close)


for command in (
    run, runs, volumes, server, local, ui, login, logout, whoami, context, usage, admin,
    secrets, completion,
):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    """Console-script entry point (``python -m sylphx`` too: same name, same completion)."""
    cli(prog_name=PROG_NAME, complete_var=COMPLETE_VAR)
