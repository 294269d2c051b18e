"""``sylphx runs get|list|logs|cancel|retry|delete``."""

from __future__ import annotations

import contextlib
import sys
from typing import Literal

import click

from sylphx._client.runs import RunsClient
from sylphx._client.transport import LogStream
from sylphx._core.states import RunState

from . import render
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Group, echo_json, state
from .run_cmd import follow

CANCEL_WAIT_SECONDS = 30.0


@click.group(cls=Group)
def runs() -> None:
    """Inspect, follow, cancel, retry and delete runs."""


@runs.command("get")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the RunView and shards as JSON.")
def get(run_id: str, as_json: bool) -> None:
    """Show a run's aggregate status and per-shard table."""
    run = RunsClient.get(state().config(), run_id)
    shards = run.shards()
    if as_json:
        echo_json({**run.view.to_wire(), "shards": [s.to_wire() for s in shards]})
        return
    click.echo(render.aggregate_line(run.view))
    click.echo(render.spec_line(run.view))
    merge = render.merge_line(run.view)
    if merge:
        click.echo(merge)
    click.echo(
        f"created {render.fmt_time(run.view.created_at)}"
        f"  started {render.fmt_time(run.view.started_at)}"
        f"  ended {render.fmt_time(run.view.ended_at)}"
    )
    click.echo()
    groups = render.failure_groups(run.view)
    if groups:
        click.echo("\n".join([*groups, ""]))
    click.echo("\n".join(render.shard_table(shards, reason=True)))


@runs.command("list")
@click.option("--status", help="Only runs in this state (queued, running, succeeded, ...).")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="Continue after this run id (from a previous page).")
@click.option("--json", "as_json", is_flag=True, help="Print the RunList as JSON.")
def list_runs(status: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """List runs, newest first."""
    page = RunsClient.list(state().config(), status=status, limit=limit, cursor=cursor)
    if as_json:
        echo_json(page.to_wire())
        return
    if not page.items:
        click.echo("no runs", err=True)
        return
    click.echo("\n".join(render.runs_table(page.items)))
    if page.next_cursor:
        click.echo(f"more: sylphx runs list --cursor {page.next_cursor}", err=True)


@runs.command("logs")
@click.argument("run_id")
@click.option("--shard", type=int, help="Shard index, 0..N-1.")
@click.option("--merge", is_flag=True, help="The merge step's log instead of a shard's.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the shard ends.")
@click.option("--attempt", type=int, help="A specific attempt (default: the latest).")
def logs(
    run_id: str, shard: int | None, merge: bool, use_stderr: bool, follow: bool, attempt: int | None
) -> None:
    """Write one shard's output (or the merge step's) to stdout as it arrives."""
    if (shard is None) == (not merge):
        raise click.UsageError("give --shard INDEX, or --merge for the merge step's log")
    run = RunsClient.get(state().config(), run_id)
    out = sys.stdout.buffer
    stream: LogStream = "stderr" if use_stderr else "stdout"
    try:
        which: int | Literal["merge"] = "merge" if merge else (shard or 0)
        for chunk in run.stream_log_bytes(which, stream, follow=follow, attempt=attempt):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        raise SystemExit(0) from None


@runs.command("cancel")
@click.argument("run_id")
@click.option("--no-wait", is_flag=True, help="Return once the cancel is accepted.")
@click.option("--json", "as_json", is_flag=True, help="Print the RunView as JSON.")
def cancel(run_id: str, no_wait: bool, as_json: bool) -> None:
    """Cancel a run; by default wait up to 30 s for it to end."""
    config = state().config()
    view = RunsClient.cancel(config, run_id)
    if not no_wait:
        run = RunsClient.get(config, run_id)
        with contextlib.suppress(TimeoutError):  # long-polls: returns as soon as it ends
            run.wait(timeout=CANCEL_WAIT_SECONDS)
        view = run.view
    if as_json:
        echo_json(view.to_wire())
    else:
        click.echo(render.aggregate_line(view))
    if not no_wait and not view.status.terminal:
        click.echo(
            f"error: run {run_id} is still {view.status.value} after"
            f" {CANCEL_WAIT_SECONDS:g}s; check `sylphx runs get {run_id}`",
            err=True,
        )
        raise SystemExit(EXIT_FAILED)


@runs.command("retry")
@click.argument("run_id")
@click.option("--indices", metavar="SET", help='Indices to run again, e.g. "2,5,7-9".')
@click.option(
    "--failed", is_flag=True, help="Every index that failed, timed out or was cancelled (default)."
)
@click.option("--follow", "-f", "follow_run", is_flag=True, help="Show shard status until done.")
@click.option("--json", "as_json", is_flag=True, help="Print the RunView as JSON.")
def retry(run_id: str, indices: str | None, failed: bool, follow_run: bool, as_json: bool) -> None:
    """Run the unsuccessful indices of an ended run again, in the same run.

    Succeeded shards and their outputs are kept; the chosen indices get new attempts
    with a fresh retry budget. With --follow, exit 0 only if the run then succeeds."""
    if failed and indices is not None:
        raise click.UsageError("give --indices or --failed, not both")
    config = state().config()
    view = RunsClient.retry(config, run_id, indices)
    if not follow_run:
        if as_json:
            echo_json(view.to_wire())
        else:
            click.echo(render.aggregate_line(view))
        return
    run = RunsClient.get(config, run_id)
    try:
        final = follow(run, sys.stdout, tty=sys.stdout.isatty(), quiet=as_json)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; run {run_id} continues.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if as_json:
        echo_json(final.to_wire())
    raise SystemExit(EXIT_OK if final.status is RunState.SUCCEEDED else EXIT_FAILED)


@runs.command("delete")
@click.argument("run_id")
def delete(run_id: str) -> None:
    """Delete an ended run with its shards and logs; its usage stays on record."""
    RunsClient.delete(state().config(), run_id)
    click.echo(f"deleted {run_id}")
