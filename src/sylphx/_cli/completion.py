"""``sylphx completion bash|zsh|fish`` and the completion of run ids from the server.

The scripts are click's (``_SYLPHX_COMPLETE=bash_source sylphx`` prints the same); tiers
and other choices complete from their ``click.Choice``; RUN_ID arguments ask the control
plane for recent runs, and complete nothing when it has not answered within 2 s overall
(the embedded control plane is asked only when its socket is there, and never started).
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time

import click
from click.shell_completion import CompletionItem, get_completion_class

from sylphx._client.contexts import connect, resolve
from sylphx._client.retrying import RetryPolicy
from sylphx._client.runs import RunsClient
from sylphx._settings import home_dir, socket_path

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
    the control plane has not answered within TIMEOUT_SECONDS, all steps included. Never
    starts the embedded one."""
    url = ctx.find_root().params.get("url")
    deadline = time.monotonic() + TIMEOUT_SECONDS
    found: list[list[CompletionItem]] = []

    def ask() -> None:
        with contextlib.suppress(Exception):  # completion must never print an error
            found.append(_recent_runs(url, incomplete, deadline))

    worker = threading.Thread(target=ask, name="sylphx-complete-run-id", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))  # a slow answer is dropped
    return found[0] if found else []


def _recent_runs(url: str | None, incomplete: str, deadline: float) -> list[CompletionItem]:
    endpoint = resolve(url, origin="--url")
    socket = None
    if endpoint.url is None:  # the embedded control plane: only if its socket is there
        socket = socket_path(home_dir())
        if not socket.exists():
            return []
    left = deadline - time.monotonic()
    if left <= 0:
        return []
    retry = RetryPolicy(attempts=1, timeout=left)
    config = connect(endpoint, timeout=left, retry=retry, socket=socket)
    try:
        page = RunsClient.list(config, limit=RECENT_RUNS)
    finally:
        config.close()
    return [
        CompletionItem(r.id, help=f"{r.status.value}  {shlex.join(r.spec.command or ['(CMD)'])}")
        for r in page.items
        if r.id.startswith(incomplete)
    ]
