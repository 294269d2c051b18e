"""``sylphx run``: build a spec from flags, submit it, optionally follow it to the end."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from sylphx._client.runs import Run, RunsClient
from sylphx._client.transport import build_spec
from sylphx._core.states import RunState
from sylphx._core.views import RunView

from . import render
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, echo_json, quote_exit_code, state
from .live import LiveView, LogLines, hints
from .run_options import (
    COMPLETION_MODE,
    MACHINE,
    parse_backoff,
    parse_env,
    parse_policy,
    parse_volumes,
    parse_when,
)

POLL_INTERVAL = 0.5


def follow(run: Run, out: TextIO, *, tty: bool, quiet: bool = False, color: bool = True) -> RunView:
    """Look at ``run`` until it ends, showing it as it goes (see :mod:`.live`).

    On a terminal the live view is redrawn in place and the full final view and the next
    steps stay when it ends; otherwise one timestamped line per batch of changes, then
    the final table (or grid) and the run's line. ``quiet`` prints nothing;
    ``color=False`` (``--no-color``; NO_COLOR too) draws without colour. Between two looks
    the run is long-polled, so its end shows at once rather than at the next look.
    """
    view = run.refresh()
    # markup off: a reason or a command is the tenant's text, never rich markup
    console = Console(file=out, no_color=None if color else True, highlight=False, markup=False)
    screen = LiveView(console)
    lines = LogLines(out)
    with contextlib.ExitStack() as stack:
        live = None
        if tty and not quiet:
            live = stack.enter_context(
                Live(screen, console=console, refresh_per_second=4, transient=True,
                     vertical_overflow="crop", redirect_stdout=False, redirect_stderr=False)
            )  # fmt: skip
        while True:
            shards = run.shards()  # fetched after the view: terminal view => terminal shards
            if live is not None:
                screen.update(view, shards)
                live.refresh()
            elif not quiet:
                lines.update(view, shards)
            if view.status.terminal:
                break
            started = time.monotonic()
            view = run.refresh(wait=POLL_INTERVAL)  # answered at once if the run ends meanwhile
            if not view.status.terminal:  # a server without long-polls answers at once
                time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))
    if quiet:
        return view
    if tty:
        console.print(screen.draw(view, shards, datetime.now(UTC), final=True))
        for hint in hints(view, shards):
            console.print(Text(hint, style="dim"), no_wrap=True, overflow="ellipsis")
    else:
        lines.final(view, shards)
    return view


def _next_steps(run_id: str) -> str:
    """How to follow a run started without --follow (printed to stderr)."""
    return (
        f"  status:  sylphx runs get {run_id}\n"
        f"  logs:    sylphx runs logs {run_id} --all --follow\n"
        "  (or start it with `sylphx run ... --follow` to watch it to the end)"
    )


@contextlib.contextmanager
def _waiting(image: str | None) -> Iterator[None]:
    """A spinner on a terminal's stderr while the submit waits on the control plane
    pulling and unpacking an image it does not have yet (the submit checks it)."""
    if image is None or not sys.stderr.isatty():
        yield
        return
    what = f"pulling and unpacking {image} (when not cached)"
    with Console(stderr=True).status(Text(f"submitting: the control plane is {what}…")):
        yield


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--image", help="Container image; omit to run the command on this host.")
@click.option("--parallelism", "-n", type=int, help="Shard count, 1..256 (default 1).")
@click.option(
    "--opportunistic", is_flag=True, help="Admit shards as capacity frees (gangScheduling false)."
)
@click.option("--completion-mode", type=COMPLETION_MODE, help="Indexed (default) or NonIndexed.")
@click.option(
    "--backoff-limit-per-index", type=int, help="Retries per shard, 0..50 (opportunistic)."
)
@click.option("--machine", type=MACHINE, help="Per-shard tier (default standard).")
@click.option("--timeout", "timeout_seconds", type=int, help="Per-shard deadline in seconds.")
@click.option("--env", "env", multiple=True, callback=parse_env, metavar="K=V", help="Repeatable.")
@click.option(
    "--volume", "volumes", multiple=True, callback=parse_volumes, metavar="ID:/PATH",
    help="Mount a volume into every shard. Repeatable.",
)  # fmt: skip
@click.option("--workdir", help="Directory the command starts in (default: current, no --image).")
@click.option(
    "--secret",
    "secret_names",
    multiple=True,
    metavar="NAME",
    help="Give the shards this org secret as an env var. Repeatable.",
)
@click.option("--no-network", is_flag=True, help="Run the shards without any network.")
@click.option(
    "--admission-timeout",
    "admission_timeout",
    type=int,
    help="Gang runs: give up waiting in the queue after this many seconds.",
)
@click.option(
    "--admission-fallback",
    type=click.Choice(["fail", "opportunistic"]),
    help="What --admission-timeout does: fail (default) or continue opportunistic.",
)
@click.option(
    "--max-failed-indexes", type=int, help="Fail the run once more indices than this failed."
)
@click.option(
    "--failure-policy",
    callback=parse_policy,
    metavar="JSON|@FILE",
    help="Rules on exit codes and reasons (FailIndex, FailRun, Ignore, Count).",
)
@click.option(
    "--retry-backoff",
    callback=parse_backoff,
    metavar="INITIAL[,FACTOR[,MAX]]",
    help="Seconds before a failed index runs again (default 1,2,60).",
)
@click.option(
    "--merge-command",
    metavar="'CMD ARGS'",
    help="Run this once every shard ended, fed SYLPHX_MANIFEST (split like a shell).",
)
@click.option(
    "--merge-when",
    callback=parse_when,
    metavar="allSucceeded|always|K",
    help="When the merge runs: all succeeded (default), always, or at least K succeeded.",
)
@click.option("--merge-machine", type=MACHINE, help="The merge's tier (default: the shards').")
@click.option("--merge-image", help="The merge's image (default: the shards').")
@click.option("--merge-timeout", type=int, help="The merge's deadline in seconds.")
@click.option("--merge-backoff-limit", type=int, help="Retries of a failed merge (default 0).")
@click.option(
    "--max-compute-seconds", type=float, help="Stop the run once it used this many compute-s."
)
@click.option(
    "--dry-run", is_flag=True, help="Quote it: would it start, what could it cost. Stores nothing."
)
@click.option("--follow", "-f", "follow_run", is_flag=True, help="Show shard status until done.")
@click.option("--no-color", is_flag=True, help="Draw --follow without colour (NO_COLOR too).")
@click.option("--json", "as_json", is_flag=True, help="Print the RunView as JSON.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
def run(
    image: str | None,
    parallelism: int | None,
    opportunistic: bool,
    completion_mode: str | None,
    backoff_limit_per_index: int | None,
    machine: str | None,
    timeout_seconds: int | None,
    env: dict[str, str],
    volumes: list[dict[str, str]],
    workdir: str | None,
    secret_names: tuple[str, ...],
    no_network: bool,
    admission_timeout: int | None,
    admission_fallback: str | None,
    max_failed_indexes: int | None,
    failure_policy: Any,
    retry_backoff: dict[str, float] | None,
    merge_command: str | None,
    merge_when: Any,
    merge_machine: str | None,
    merge_image: str | None,
    merge_timeout: int | None,
    merge_backoff_limit: int | None,
    max_compute_seconds: float | None,
    dry_run: bool,
    follow_run: bool,
    no_color: bool,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run CMD as a run of N indexed shards (N = --parallelism, default 1).

    Each shard gets SYLPHX_SHARD_INDEX and SYLPHX_SHARD_COUNT. With --image, CMD replaces
    the image's CMD and may be omitted to run it. Prints the run id (stdout) and how to
    follow it (stderr); with --follow, exits 0 only if the run succeeded.

    \b
    Examples:
      sylphx run -n 9 --opportunistic --machine large --follow -- python train.py
      ID=$(sylphx run -n 4 -- python part.py) && sylphx runs logs "$ID" --all --follow
      sylphx run --image python:3.12-slim -n 3 -- python -c 'print("hi")'
      sylphx run --image ghcr.io/acme/job@sha256:...      # the image's own CMD
      sylphx run --dry-run -n 64 --machine xlarge -- python big.py
    """
    if not command and image is None:
        raise click.UsageError(
            "no command to run. Fix: give it after --, e.g. `sylphx run -n 4 -- python"
            " train.py`, or give --image IMAGE to run the image's CMD"
        )
    fields: dict[str, Any] = {
        "image": image,
        "command": list(command) or None,
        "parallelism": parallelism,
        "gang_scheduling": False if opportunistic else None,
        "completion_mode": completion_mode,
        "backoff_limit_per_index": backoff_limit_per_index,
        "machine": machine,
        "timeout_seconds": timeout_seconds,
        "env": env or None,
        "volume_mounts": volumes or None,
        "working_dir": os.path.abspath(workdir) if workdir else None,
        "secrets": list(secret_names) or None,
        "network": False if no_network else None,
        "admission_timeout_seconds": admission_timeout,
        "admission_fallback": admission_fallback,
        "max_failed_indexes": max_failed_indexes,
        "failure_policy": failure_policy,
        "retry_backoff": retry_backoff,
        "max_compute_seconds": max_compute_seconds,
    }
    merge = {
        "when": merge_when,
        "machine": merge_machine,
        "image": merge_image,
        "timeout_seconds": merge_timeout,
        "backoff_limit": merge_backoff_limit,
    }
    if merge_command is not None:
        fields["merge"] = {"command": shlex.split(merge_command)} | {
            k: v for k, v in merge.items() if v is not None
        }
    elif any(v is not None for v in merge.values()):
        raise click.UsageError("--merge-* options need --merge-command 'CMD ARGS'")
    spec = build_spec(fields)  # ValidationError -> exit 2 before touching the server
    if dry_run:
        quote = RunsClient.quote(state().config(), **fields)
        if as_json:
            echo_json(quote.to_wire())
        else:
            click.echo("\n".join(render.quote_lines(quote)))
        raise SystemExit(quote_exit_code(quote))
    with _waiting(spec.image or (spec.merge.image if spec.merge else None)):
        handle = RunsClient.submit(state().config(), spec)
    if not follow_run:
        if as_json:
            echo_json(handle.view.to_wire())
        else:
            click.echo(handle.id)  # stdout: just the id, for ID=$(sylphx run ...)
            click.echo(_next_steps(handle.id), err=True)
        return
    tty = sys.stdout.isatty()
    if not as_json and not tty:  # on a terminal the live view's header says it
        click.echo(f"{handle.id}  {render.spec_line(handle.view)}")
    try:
        final = follow(handle, sys.stdout, tty=tty, quiet=as_json, color=not no_color)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following; run {handle.id} continues."
            f" Cancel it with: sylphx runs cancel {handle.id}",
            err=True,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    if as_json:
        echo_json(final.to_wire())
    raise SystemExit(EXIT_OK if final.status is RunState.SUCCEEDED else EXIT_FAILED)
