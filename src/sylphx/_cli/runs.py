"""``sylphx runs get|list|logs|cancel|retry|delete``."""

from __future__ import annotations

import contextlib
import sys
from typing import Literal

import click

from sylphx._client.runs import RunsClient
from sylphx._client.transport import LogStream
from sylphx._core.states import RunState

from . import render, shard_logs
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Group, echo_json, state
from .completion import complete_run_id
from .run_cmd import follow
from .timeline import timeline

CANCEL_WAIT_SECONDS = 30.0


@click.group(cls=Group)
def runs() -> None:
    """Inspect, follow, cancel, retry and delete runs (RUN_IDs complete from the server).

    \b
    Examples:
      sylphx runs list --status running
      sylphx runs get wrk_01m87q2c9x4k7h3a
      sylphx runs logs wrk_01m87q2c9x4k7h3a --all --follow
      sylphx runs retry wrk_01m87q2c9x4k7h3a --failed --follow
    """


@runs.command("get")
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("--json", "as_json", is_flag=True, help="Print the RunView and shards as JSON.")
def get(run_id: str, as_json: bool) -> None:
    """Show a run's aggregate status and per-shard table.

    \b
    Examples:
      sylphx runs get wrk_01m87q2c9x4k7h3a
      sylphx runs get wrk_01m87q2c9x4k7h3a --json | jq '.shards[] | select(.status=="failed")'
    """
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
    """List runs, newest first.

    \b
    Examples:
      sylphx runs list
      sylphx runs list --status partial --limit 10
      sylphx runs list --json | jq -r '.items[].id'
    """
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
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("--shard", type=int, help="Shard index, 0..N-1 (default: 0 for a one-shard run).")
@click.option(
    "--all",
    "all_shards",
    is_flag=True,
    help="Every shard's lines, interleaved as they arrive, each prefixed [INDEX].",
)
@click.option("--indices", metavar="SET", help='As --all, for these shards only, e.g. "0-3,7".')
@click.option(
    "--failed",
    is_flag=True,
    help="With --all: only shards whose status is failed or timed_out (not cancelled):"
    " their last attempt's log, whole, once ended. Without --follow, those that have"
    " ended so now; with it, also each shard that ends so later, as it ends.",
)
@click.option("--merge", is_flag=True, help="The merge step's log instead of a shard's.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option(
    "--follow", "-f", is_flag=True, help="Keep streaming until the shard (or every shard) ends."
)
@click.option("--attempt", type=int, help="A specific attempt (default: the latest).")
@click.option(
    "--prefix/--no-prefix", default=None, help="Start each line with [INDEX] (default: with --all)."
)
@click.option(
    "--timestamps",
    is_flag=True,
    help="Start each line with the time the control plane read it (ISO 8601 UTC, ms).",
)
@click.option("--no-color", is_flag=True, help="No colour in the prefixes (NO_COLOR too).")
def logs(
    run_id: str,
    shard: int | None,
    all_shards: bool,
    indices: str | None,
    failed: bool,
    merge: bool,
    use_stderr: bool,
    follow: bool,
    attempt: int | None,
    prefix: bool | None,
    timestamps: bool,
    no_color: bool,
) -> None:
    """Write one shard's output (or the merge step's, or with --all every shard's) to
    stdout as it arrives.

    A one-shard run needs no --shard; for more shards give --shard INDEX or --all. With
    --all the lines of every shard come from one stream, whole lines only (two shards'
    never mix), each prefixed [INDEX] (coloured per shard on a terminal); with --follow
    until every shard has ended, moving on to retries."""
    many = all_shards or indices is not None
    lined = many or timestamps or bool(prefix)  # read as lines, from the all-shard stream
    problem = shard_logs.usage_problem(
        many=many, shard=shard, merge=merge, attempt=attempt, failed=failed, lined=lined
    )
    if problem:
        raise click.UsageError(problem)
    run = RunsClient.get(state().config(), run_id)
    if shard is None and not merge and not many:
        shard = shard_logs.default_shard(run.view)
    out = sys.stdout.buffer
    stream: LogStream = "stderr" if use_stderr else "stdout"
    try:
        if lined:
            chosen = indices if many else str(shard)
            lines = run.stream_all_logs(stream, follow=follow, indices=chosen, failed=failed)
            colour = shard_logs.colour_wanted(out, no_color)
            shown = many if prefix is None else prefix
            shard_logs.write_lines(lines, out, prefix=shown, timestamps=timestamps, colour=colour)
            return
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
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("--no-wait", is_flag=True, help="Return once the cancel is accepted.")
@click.option("--json", "as_json", is_flag=True, help="Print the RunView as JSON.")
def cancel(run_id: str, no_wait: bool, as_json: bool) -> None:
    """Cancel a run; by default wait up to 30 s for it to end.

    \b
    Examples:
      sylphx runs cancel wrk_01m87q2c9x4k7h3a
      sylphx runs cancel wrk_01m87q2c9x4k7h3a --no-wait --json
    """
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
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("--indices", metavar="SET", help='Indices to run again, e.g. "2,5,7-9".')
@click.option(
    "--failed", is_flag=True, help="Every index that failed, timed out or was cancelled (default)."
)
@click.option("--follow", "-f", "follow_run", is_flag=True, help="Show shard status until done.")
@click.option("--no-color", is_flag=True, help="Draw --follow without colour (NO_COLOR too).")
@click.option("--json", "as_json", is_flag=True, help="Print the RunView as JSON.")
def retry(
    run_id: str, indices: str | None, failed: bool, follow_run: bool, no_color: bool, as_json: bool
) -> None:
    """Run the unsuccessful indices of an ended run again, in the same run.

    Succeeded shards and their outputs are kept; the chosen indices get new attempts
    with a fresh retry budget. With --follow, exit 0 only if the run then succeeds.

    \b
    Examples:
      sylphx runs retry wrk_01m87q2c9x4k7h3a                 # every failed index
      sylphx runs retry wrk_01m87q2c9x4k7h3a --indices 2,5,7-9 --follow
    """
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
        tty = sys.stdout.isatty()
        final = follow(run, sys.stdout, tty=tty, quiet=as_json, color=not no_color)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; run {run_id} continues.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if as_json:
        echo_json(final.to_wire())
    raise SystemExit(EXIT_OK if final.status is RunState.SUCCEEDED else EXIT_FAILED)


@runs.command("delete")
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": RUN_ID}.')
def delete(run_id: str, as_json: bool) -> None:
    """Delete an ended run with its shards and logs; its usage stays on record.

    \b
    Examples:
      sylphx runs delete wrk_01m87q2c9x4k7h3a
      sylphx runs list --status failed --json | jq -r '.items[].id' | xargs -n1 sylphx runs delete
    """
    RunsClient.delete(state().config(), run_id)
    if as_json:
        echo_json({"deleted": run_id})
    else:
        click.echo(f"deleted {run_id}")


runs.add_command(timeline)
