"""Plain-text tables and status lines for the CLI."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

from sylphx._core.views import Quote, RunView, ShardView, VolumeView


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def fmt_duration(seconds: float | None) -> str:
    """``4.2s``, ``3m05s`` or ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_time(value: datetime | None) -> str:
    """Local wall-clock time, to the second."""
    if value is None:
        return "-"
    return _utc(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def shard_duration(shard: ShardView, now: datetime | None = None) -> float | None:
    """The shard's duration once it ended; before, how long its current attempt has run
    (a retried shard's earlier attempts left out; None while the next one waits)."""
    if shard.duration_seconds is not None:
        return shard.duration_seconds
    started = shard.started_at
    if shard.history and not shard.status.terminal:
        started = shard.history[-1].started_at
    if started is None:
        return None
    end = shard.ended_at or now or datetime.now(UTC)
    return max(0.0, (_utc(end) - _utc(started)).total_seconds())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces (trailing blanks trimmed)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def _exit(shard: ShardView) -> str:
    """The exit code of the shard's current attempt: ``-`` until it ended (a retried
    shard's view keeps its previous attempt's code while the next one is pending/running)."""
    return "-" if shard.exit_code is None or not shard.status.terminal else str(shard.exit_code)


SHARD_COLUMNS = ("INDEX", "STATUS", "ATTEMPTS", "PREEMPTED", "EXIT", "DURATION")


def shard_rows(
    shards: Sequence[ShardView], *, reason: bool = False, now: datetime | None = None
) -> list[list[str]]:
    """The cells of ``SHARD_COLUMNS`` (and REASON) per shard, by index: the one source of
    the shard table, plain here and coloured by the live view."""
    rows = []
    for s in sorted(shards, key=lambda s: s.index):
        row = [str(s.index), s.status.value, str(s.attempts), str(s.preemptions)]
        row.append(_exit(s))
        row.append(fmt_duration(shard_duration(s, now)))
        if reason:
            retry = f"retry at {fmt_time(s.retry_at)}" if s.retry_at else ""
            row.append(" · ".join(part for part in (s.reason, retry) if part))
        rows.append(row)
    return rows


def shard_table(
    shards: Sequence[ShardView], *, reason: bool = False, now: datetime | None = None
) -> list[str]:
    """INDEX, STATUS, ATTEMPTS, PREEMPTED, EXIT, DURATION (and REASON) per shard."""
    headers = [*SHARD_COLUMNS, *(["REASON"] if reason else [])]
    return table(headers, shard_rows(shards, reason=reason, now=now))


def aggregate_line(view: RunView) -> str:
    """``wrk_x  running  3/9 succeeded · 1 failed · 5 running``."""
    agg = view.aggregate
    parts = [f"{agg.succeeded}/{agg.total} succeeded"]
    if view.compute_seconds:
        parts.append(f"{view.compute_seconds:,.1f} compute-s")
    for label, count in (
        ("failed", agg.failed),
        ("timed out", agg.timed_out),
        ("cancelled", agg.cancelled),
        ("running", agg.running),
        ("pending", agg.pending),
    ):
        if count:
            parts.append(f"{count} {label}")
    line = f"{view.id}  {view.status.value}  " + " · ".join(parts)
    if view.cancel_requested and not view.status.terminal:
        line += "  (cancelling)"
    if view.reopened:
        line += f"  (retried {view.reopened}x)"
    if view.queue_position is not None:
        line += f"  [queue position {view.queue_position}]"
    if view.message:
        line += f"  — {view.message}"
    return line


def spec_line(view: RunView) -> str:
    """What the run executes and how it fans out."""
    spec = view.spec
    where = spec.image or f"host:{spec.working_dir or '-'}"
    retries = "retry" if spec.retry_budget == 1 else "retries"
    mode = "gang" if spec.gang else f"opportunistic, {spec.retry_budget} {retries}/index"
    if spec.retry_budget:
        b = spec.retry_backoff
        mode += f" (backoff {b.initial_seconds:g}s x{b.factor:g} to {b.max_seconds:g}s)"
    if spec.max_failed_indexes is not None:
        mode += f" · maxFailedIndexes {spec.max_failed_indexes}"
    if spec.failure_policy:
        mode += f" · failurePolicy {len(spec.failure_policy)} rule(s)"
    command = shlex.join(spec.command or ["(image CMD)"])
    return (
        f"{command}  [{where} · {spec.parallelism} x {spec.machine} · {mode}"
        f" · timeout {spec.timeout_seconds}s]"
    )


def merge_line(view: RunView) -> str | None:
    """The run's merge step: ``merge: succeeded (attempt 1, exit 0, 1.2s) python m.py``."""
    step, spec = view.merge, view.spec.merge
    if step is None or spec is None:
        return None
    when = spec.when if isinstance(spec.when, str) else f"minSucceeded {spec.when.min_succeeded}"
    if step.status.value == "pending" and not step.attempts:
        return f"merge: waiting for the shards (when {when})  {shlex.join(spec.command)}"
    extra = [f"attempt {step.attempts}"] if step.attempts else []
    if step.exit_code is not None:
        extra.append(f"exit {step.exit_code}")
    duration = shard_duration(step)
    if duration is not None:
        extra.append(fmt_duration(duration))
    line = f"merge: {step.status.value}" + (f" ({', '.join(extra)})" if extra else "")
    if step.reason and step.status.terminal and step.status.value != "succeeded":
        line += f": {step.reason}"
    return f"{line}  {shlex.join(spec.command)}"


def failure_groups(view: RunView) -> list[str]:
    """``FAILED 38 (0-37): Error, exit 1: ValueError: bad row <n> in <path>`` per group."""
    lines = []
    for g in view.failure_groups:
        code = f", exit {g.exit_code}" if g.exit_code is not None else ""
        lines.append(f"failed {g.count} ({g.indices}): {g.reason}{code}: {g.sample or '-'}")
    return lines


def quote_lines(quote: Quote) -> list[str]:
    """``sylphx run --dry-run``: the verdict, the ceiling, the expected cost, the credit."""
    verdict = {"startsNow": "starts now", "wouldQueue": "would queue", "refused": "refused"}
    spec = quote.spec
    lines = [
        f"{verdict[quote.verdict]}: {quote.reason}",
        f"ceiling   {quote.ceiling_compute_seconds:,.1f} compute-s"
        f"  ({spec.parallelism} x {spec.machine} x {spec.timeout_seconds}s timeout)"
        + (
            f"; {quote.retries_ceiling_compute_seconds:,.1f} if every retry runs"
            if quote.retries_ceiling_compute_seconds > quote.ceiling_compute_seconds
            else ""
        ),
    ]
    if quote.expected_compute_seconds is not None:
        lines.append(
            f"expected  {quote.expected_compute_seconds:,.1f} compute-s  (median shard"
            f" {fmt_duration(quote.median_shard_seconds)} over {quote.based_on_runs} recent"
            " run(s) of this command and tier)"
        )
    else:
        lines.append("expected  -  (no recent run of this command and tier)")
    lines.append(
        f"credit    {quote.credit_remaining_seconds:,.1f} of {quote.monthly_credit_seconds:,.0f}"
        f" left this month; billable: at most {quote.billable_ceiling_seconds:,.1f}"
        + (
            f", expected {quote.billable_expected_seconds:,.1f}"
            if quote.billable_expected_seconds is not None
            else ""
        )
    )
    return lines


def shard_change(shard: ShardView) -> str:
    """One line for a shard status change (non-TTY --follow)."""
    extra = f"attempt {shard.attempts}"
    if shard.exit_code is not None:
        extra += f", exit {shard.exit_code}"
    if shard.reason and shard.status.terminal:
        extra += f": {shard.reason}"
    return f"shard {shard.index}: {shard.status.value} ({extra})"


def runs_table(runs: Sequence[RunView]) -> list[str]:
    """ID, STATUS, SHARDS, MACHINE, CREATED, COMMAND per run."""
    rows = []
    for r in runs:
        command = shlex.join(r.spec.command or ["(image CMD)"])
        if len(command) > 40:
            command = command[:39] + "…"
        shards = f"{r.aggregate.succeeded}/{r.aggregate.total or r.spec.parallelism}"
        rows.append([r.id, r.status.value, shards, r.spec.machine, fmt_time(r.created_at), command])
    return table(["ID", "STATUS", "SUCCEEDED", "MACHINE", "CREATED", "COMMAND"], rows)


def volumes_table(volumes: Sequence[VolumeView]) -> list[str]:
    """ID, NAME, CREATED per volume."""
    rows = [[v.id, v.name or "-", fmt_time(v.created_at)] for v in volumes]
    return table(["ID", "NAME", "CREATED"], rows)
