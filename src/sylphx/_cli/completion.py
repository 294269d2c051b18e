"""``sylphx completion bash|zsh|fish`` and the completion of run ids from the server.

The scripts are click's (``_SYLPHX_COMPLETE=bash_source sylphx`` prints the same); tiers
and other choices complete from their ``click.Choice``; RUN_ID arguments ask the control
plane for recent runs, and complete nothing when it does not answer.
"""

from __future__ import annotations

import contextlib
import shlex

import click
from click.shell_completion import CompletionItem, get_completion_class

from sylphx._client.contexts import connect, resolve
from sylphx._client.embedded import local_server_status
from sylphx._client.retrying import RetryPolicy
from sylphx._client.runs import RunsClient

PROG_NAME = "sylphx"
COMPLETE_VAR = "_SYLPHX_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
RECENT_RUNS = 50
TIMEOUT_SECONDS = 2.0


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Commands, options and choices (e.g. --machine tiers) complete; run ids complete
    from the control plane's recent runs.

    \b
    Examples:
      eval "$(sylphx completion bash)"     # add to ~/.bashrc
      eval "$(sylphx completion zsh)"      # add to ~/.zshrc
      sylphx completion fish > ~/.config/fish/completions/sylphx.fish
    """
    root = click.get_current_context().find_root().command
    script = get_completion_class(shell)
    assert script is not None  # every SHELLS entry is one of click's
    click.echo(script(root, {}, PROG_NAME, COMPLETE_VAR).source())


def complete_run_id(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Recent run ids starting with ``incomplete`` (help: status and command), or none when
    the control plane does not answer at once. Never starts the embedded one."""
    with contextlib.suppress(Exception):  # completion must never print an error
        return _recent_runs(ctx, incomplete)
    return []


def _recent_runs(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    endpoint = resolve(ctx.find_root().params.get("url"), origin="--url")
    if endpoint.url is None and not local_server_status().healthy:
        return []
    config = connect(endpoint, timeout=TIMEOUT_SECONDS, retry=RetryPolicy(attempts=1))
    try:
        page = RunsClient.list(config, limit=RECENT_RUNS)
    finally:
        config.close()
    return [
        CompletionItem(r.id, help=f"{r.status.value}  {shlex.join(r.spec.command or ['(CMD)'])}")
        for r in page.items
        if r.id.startswith(incomplete)
    ]
