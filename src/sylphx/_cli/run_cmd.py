"""``sylphx run``: build a spec from flags, submit it, optionally follow it to the end."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click

from sylphx._client.runs import Run, RunsClient
from sylphx._client.transport import build_spec
from sylphx._core.states import RunState
from sylphx._core.views import RunView, ShardView

from . import render
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, echo_json, state

POLL_INTERVAL = 0.5


def _parse_env(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE. Fix: e.g. --env SEED=42 (repeat for more)"
            )
        env[name] = value
    return env


def _parse_policy(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """``--failure-policy``: a JSON list of rules, inline or ``@file``."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise click.BadParameter(
            "is not JSON. Fix: e.g. --failure-policy"
            ' \'[{"onExitCodes": {"operator": "In", "values": [42]}, "action": "FailIndex"}]\''
            " or @policy.json"
        ) from None


def _parse_backoff(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> dict[str, float] | None:
    """``--retry-backoff INITIAL[,FACTOR[,MAX]]`` in seconds."""
    if value is None:
        return None
    names = ("initial_seconds", "factor", "max_seconds")
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 3:
        raise click.BadParameter(
            f"{value!r} is not INITIAL[,FACTOR[,MAX]]. Fix: e.g. --retry-backoff 10,2,360"
        )
    return dict(zip(names, numbers, strict=False))


def _parse_when(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """``--merge-when allSucceeded|always|K`` (K: at least K indices succeeded)."""
    if value is None or value in ("allSucceeded", "always"):
        return value
    if value.isdigit():
        return {"min_succeeded": int(value)}
    raise click.BadParameter(f"{value!r}: give allSucceeded, always or a number of indices K")


def _parse_volumes(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[dict[str, str]]:
    mounts = []
    for item in values:
        volume_id, sep, path = item.partition(":")
        if not sep or not volume_id or not path:
            raise click.BadParameter(
                f"{item!r} is not ID:/path. Fix: e.g. --volume vol_abc123:/cache"
                " (ids from `sylphx volumes list`)"
            )
        mounts.append({"volume_id": volume_id, "mount_path": path})
    return mounts


def _redraw(out: TextIO, lines: list[str], previous: int) -> int:
    height = shutil.get_terminal_size((100, 40)).lines - 1
    if len(lines) > height:
        hidden = len(lines) - height + 1
        lines = [*lines[: height - 1], f"… {hidden} more shards"]
    if previous:
        out.write(f"\x1b[{previous}F\x1b[J")  # back to the table's first line, clear below
    out.write("\n".join(lines) + "\n")
    out.flush()
    return len(lines)


def _merge(view: RunView) -> list[str]:
    line = render.merge_line(view)
    return [line] if line else []


def follow(run: Run, out: TextIO, *, tty: bool, quiet: bool = False) -> RunView:
    """Poll ``run`` until terminal, showing the aggregate and the per-shard table.

    On a TTY the table is redrawn in place; otherwise one line is printed per shard
    status change and the final table at the end. ``quiet`` prints nothing. Between two
    looks the run is long-polled, so its end is shown at once rather than at the next look.
    """
    seen: dict[int, tuple[str, int]] = {}
    drawn = 0
    shards: list[ShardView] = []
    view = run.refresh()
    while True:
        shards = run.shards()  # fetched after the view, so terminal view => terminal shards
        if quiet:
            pass
        elif tty:
            head = [render.aggregate_line(view), *_merge(view)]
            drawn = _redraw(out, [*head, *render.shard_table(shards)], drawn)
        else:
            for shard in sorted(shards, key=lambda s: s.index):
                key = (shard.status.value, shard.attempts)
                if seen.get(shard.index) != key:
                    seen[shard.index] = key
                    out.write(render.shard_change(shard) + "\n")
            step = view.merge
            if step is not None and seen.get(-1) != (step.status.value, step.attempts):
                seen[-1] = (step.status.value, step.attempts)
                out.write("".join(f"{line}\n" for line in _merge(view)))
            out.flush()
        if view.status.terminal:
            break
        started = time.monotonic()
        view = run.refresh(wait=POLL_INTERVAL)  # answered at once if the run ends meanwhile
        if not view.status.terminal:  # a server without long-polls answers at once
            time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))
    if not quiet and not tty:
        final = [*render.shard_table(shards), *_merge(view), render.aggregate_line(view)]
        out.write("\n".join(final) + "\n")
        out.flush()
    return view


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--image", help="Container image; omit to run the command on this host.")
@click.option("--parallelism", "-n", type=int, help="Shard count, 1..256 (default 1).")
@click.option(
    "--opportunistic", is_flag=True, help="Admit shards as capacity frees (gangScheduling false)."
)
@click.option("--completion-mode", help="Indexed (default) or NonIndexed.")
@click.option(
    "--backoff-limit-per-index", type=int, help="Retries per shard, 0..50 (opportunistic)."
)
@click.option("--machine", help="Per-shard tier: nano micro small standard large xlarge ...")
@click.option("--timeout", "timeout_seconds", type=int, help="Per-shard deadline in seconds.")
@click.option("--env", "env", multiple=True, callback=_parse_env, metavar="K=V", help="Repeatable.")
@click.option(
    "--volume", "volumes", multiple=True, callback=_parse_volumes, metavar="ID:/PATH",
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
    callback=_parse_policy,
    metavar="JSON|@FILE",
    help="Rules on exit codes and reasons (FailIndex, FailRun, Ignore, Count).",
)
@click.option(
    "--retry-backoff",
    callback=_parse_backoff,
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
    callback=_parse_when,
    metavar="allSucceeded|always|K",
    help="When the merge runs: all succeeded (default), always, or at least K succeeded.",
)
@click.option("--merge-machine", help="The merge's tier (default: the shards').")
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
@click.option("--json", "as_json", is_flag=True, help="Print the RunView as JSON.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD...")
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
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run CMD as a run of N indexed shards (N = --parallelism, default 1)."""
    fields: dict[str, Any] = {
        "image": image,
        "command": list(command),
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
        raise SystemExit(EXIT_FAILED if quote.verdict == "refused" else EXIT_OK)
    handle = RunsClient.submit(state().config(), spec)
    if not follow_run:
        if as_json:
            echo_json(handle.view.to_wire())
        else:
            click.echo(handle.id)
        return
    if not as_json:
        click.echo(f"{handle.id}  {render.spec_line(handle.view)}")
    try:
        final = follow(handle, sys.stdout, tty=sys.stdout.isatty(), quiet=as_json)
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
