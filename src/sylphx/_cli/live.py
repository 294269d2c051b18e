"""What ``--follow`` shows while a run goes on, on a terminal or off one.

On a terminal (:class:`LiveView`, drawn by rich's ``Live``): a header that always stays
on screen (the run, its command and tier, elapsed time, a progress bar of ended shards,
the counts by state in colour, an ETA from the finished shards' durations, the run's
message while it waits), then the shard table for a run that fits the screen, or else a
compact grid -- one cell per shard, so 256 fit in a few rows -- and the shards that need
attention. Every line is cut to the width (nothing wraps, so nothing is left behind by a
redraw) and the whole view to the height; it is redrawn four times a second, so a resize
shows at once. Off a terminal (:class:`LogLines`): one timestamped line per batch of
changes, and one per attempt that ended badly or started again.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from sylphx._core.states import ShardState
from sylphx._core.views import RunView, ShardView

from . import render
from .palette import SHARD_GLYPHS as GLYPHS
from .palette import STATE_STYLES as STYLES

GRID_GROUP = 10  # cells between two blanks in a grid row
LEGEND = ("succeeded", "running", "pending", "failed", "timed_out", "cancelled")
ATTENTION_MIN_ROWS = 3


def legend() -> Text:
    """``■ succeeded  ▸ running  · pending  ✗ failed ...`` in the states' colours."""
    text = Text()
    for n, state in enumerate(LEGEND):
        text.append("  " if n else "")
        text.append(f"{GLYPHS[state]} {state.replace('_', ' ')}", style=STYLES[state])
    return text


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def elapsed(view: RunView, now: datetime) -> float:
    """Seconds since the run started (or, while queued, since it was submitted)."""
    start = _utc(view.started_at or view.created_at)
    end = _utc(view.ended_at) if view.ended_at else now
    return max(0.0, (end - start).total_seconds())


def eta(view: RunView, shards: Sequence[ShardView], now: datetime, slots: int = 0) -> float | None:
    """Seconds until every shard ends, judged by the finished shards' median duration:
    what the running ones still need, plus the waves the pending ones make at ``slots``
    at once (the most seen running; at least the ones running now). None until a shard
    has finished, while nothing runs and nothing ever did, and while a merge step waits or
    runs (its own duration is not known)."""
    done = [s.duration_seconds for s in shards if s.status.terminal and s.duration_seconds]
    if not done:
        return None
    typical = statistics.median(done)
    running = [s for s in shards if s.status in (ShardState.RUNNING, ShardState.STARTING)]
    pending = sum(1 for s in shards if s.status is ShardState.PENDING)
    if not running and not pending:
        merging = view.merge is not None and not view.merge.status.terminal
        return None if merging else 0.0
    slots = max(slots, len(running))
    if not slots:
        return None
    left = [max(0.0, typical - (render.shard_duration(s, now) or 0.0)) for s in running]
    waves = -(-pending // slots) if pending else 0
    return max(left, default=0.0) + waves * typical


def counts_text(view: RunView) -> Text:
    """``■ 12 succeeded  ✗ 2 failed  ▸ 8 running  · 3 pending`` in the states' colours."""
    agg = view.aggregate
    text = Text()
    for state, count in (
        ("succeeded", agg.succeeded),
        ("failed", agg.failed),
        ("timed_out", agg.timed_out),
        ("cancelled", agg.cancelled),
        ("running", agg.running),
        ("pending", agg.pending),
    ):
        if count or state in ("succeeded", "running"):
            label = state.replace("_", " ")
            text.append(f"{GLYPHS[state]} {count} {label}", style=STYLES[state])
            text.append("  ")
    text.rstrip()
    return text


def _line(text: Text | str, width: int) -> Text:
    """One line of at most ``width`` cells: never wraps (an ellipsis where it is cut)."""
    line = Text(text) if isinstance(text, str) else text.copy()
    line.no_wrap = True
    line.overflow = "ellipsis"
    line.truncate(width, overflow="ellipsis")
    return line


def header(
    view: RunView, shards: Sequence[ShardView], now: datetime, width: int, slots: int = 0
) -> list[Text]:
    """The lines that stay on screen whatever the run's size."""
    spec, agg = view.spec, view.aggregate
    command = shlex.join(spec.command or ["(image CMD)"])
    status = Text(view.status.value, style=f"bold {STYLES.get(view.status.value, '')}")
    first = Text.assemble((view.id, "bold"), "  ", status, "  ", command)
    mode = "gang" if spec.gang else "opportunistic"
    if spec.retry_budget:
        mode += f", {spec.retry_budget} {'retry' if spec.retry_budget == 1 else 'retries'}/index"
    took = render.fmt_duration(elapsed(view, now))
    about = f"{spec.parallelism} x {spec.machine} · {mode} · timeout {spec.timeout_seconds}s"
    about += f" · elapsed {took}"
    left = eta(view, shards, now, slots) if not view.status.terminal else None
    if left is not None:
        about += f" · ETA ~{render.fmt_duration(left)}"
    if view.compute_seconds:
        about += f" · {view.compute_seconds:,.1f} compute-s"
    if view.cancel_requested and not view.status.terminal:
        about += " · cancelling"
    if view.reopened:
        about += f" · retried {view.reopened}x"
    ended = agg.succeeded + agg.failed + agg.timed_out + agg.cancelled
    total = agg.total or spec.parallelism
    lines = [_line(first, width), _line(about, width)]
    bar_line = bar(ended, total, width)
    lines += [_line(bar_line, width), _line(counts_text(view), width)]
    if view.queue_position is not None or view.message:
        where = f"queue position {view.queue_position}: " if view.queue_position else ""
        style = "" if view.status.terminal else "yellow"
        lines.append(_line(Text(f"{where}{view.message or 'waiting'}", style=style), width))
    merge = render.merge_line(view)
    if merge:
        lines.append(_line(merge, width))
    return lines


def bar(ended: int, total: int, width: int) -> Text:
    """``━━━━━━━━━╸━━━━━━  12/256 ended``: a progress bar of ended shards."""
    label = f"  {ended}/{total} ended"
    room = max(10, width - len(label))
    filled = room * ended // total if total else room
    text = Text()
    text.append("━" * filled, style="green")
    text.append("━" * (room - filled), style="grey30")
    text.append(label)
    return text


def shard_table(shards: Sequence[ShardView], now: datetime, width: int) -> Table:
    """The shard table (``render.shard_rows``, the same as off a terminal), its status
    column coloured."""
    table = Table(box=None, pad_edge=False, width=width, show_edge=False, header_style="bold")
    for name in render.SHARD_COLUMNS:
        table.add_column(name, no_wrap=True)
    table.add_column("REASON", no_wrap=True, overflow="ellipsis", ratio=1)
    for row in render.shard_rows(shards, reason=True, now=now):
        state = row[1]
        status = Text(f"{GLYPHS[state]} {state}", style=STYLES[state])
        table.add_row(*(Text(cell) for cell in row[:1]), status, *(Text(c) for c in row[2:]))
    return table


def grid(shards: Sequence[ShardView], width: int) -> list[Text]:
    """One coloured cell per shard, ``GRID_GROUP`` to a block, each row labelled with
    its first index."""
    ordered = sorted(shards, key=lambda s: s.index)
    label = len(str(max(len(ordered) - 1, 0))) + 1
    blocks = max(1, (width - label) // (GRID_GROUP + 1))
    per_row = blocks * GRID_GROUP
    rows = []
    for start in range(0, len(ordered), per_row):
        row = Text()
        row.append(str(start).rjust(label - 1) + " ", style="dim")
        for n, s in enumerate(ordered[start : start + per_row]):
            if n and n % GRID_GROUP == 0:
                row.append(" ")
            row.append(GLYPHS[s.status.value], style=STYLES[s.status.value])
        rows.append(_line(row, width))
    return rows


def attention(shards: Sequence[ShardView], now: datetime, width: int, room: int) -> list[Text]:
    """The shards worth a look, at most ``room`` lines: failed ones with their reason,
    then the ones running longest."""
    bad = [s for s in shards if s.status.value in ("failed", "timed_out")]
    running = [s for s in shards if s.status is ShardState.RUNNING]
    running.sort(key=lambda s: -(render.shard_duration(s, now) or 0.0))
    lines: list[Text] = []
    for s in sorted(bad, key=lambda s: s.index):
        code = f" exit {s.exit_code}" if s.exit_code is not None else ""
        lines.append(
            Text.assemble(
                (
                    f"{GLYPHS[s.status.value]} shard {s.index} {s.status.value}{code}",
                    STYLES[s.status.value],
                ),
                f"  {s.reason or ''}",
            )
        )
    for s in running[:3]:
        took = render.fmt_duration(render.shard_duration(s, now))
        lines.append(
            Text(
                f"{GLYPHS['running']} shard {s.index} running for {took} (attempt {s.attempts})",
                style=STYLES["running"],
            )
        )
    if len(lines) > room:
        more = len(lines) - room + 1
        lines = [*lines[: room - 1], Text(f"… {more} more", style="dim")]
    return [_line(line, width) for line in lines]


def hints(view: RunView, shards: Sequence[ShardView]) -> list[str]:
    """What to type next, once the run ended."""
    bad = sorted(s.index for s in shards if s.status.value in ("failed", "timed_out"))
    out = []
    if bad:
        out.append(f"sylphx runs logs {view.id} --shard {bad[0]} --stderr   # why it failed")
        out.append(f"sylphx runs retry {view.id} --failed --follow   # run them again")
    merge = view.merge
    if merge is not None and merge.status.value in ("failed", "timed_out"):
        out.append(f"sylphx runs logs {view.id} --merge --stderr   # why the merge step failed")
    out.append(f"sylphx runs timeline {view.id}   # every attempt over time")
    return out


class LiveView:
    """The terminal view: ``update`` with each new look at the run, ``__rich__`` draws it
    at the console's current size (rich's Live redraws it on its own refresh)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.look: tuple[RunView, list[ShardView]] | None = None
        self.slots = 0  # the most shards seen running at once (for the ETA)

    def update(self, view: RunView, shards: list[ShardView]) -> None:
        """A new look at the run, swapped in as one tuple (the refresh thread reads it)."""
        running = sum(1 for s in shards if s.status in (ShardState.RUNNING, ShardState.STARTING))
        self.slots = max(self.slots, running)
        self.look = (view, shards)

    def __rich__(self) -> RenderableType:
        look = self.look
        if look is None:
            return Text("")
        return self.draw(*look, datetime.now(UTC), final=False)

    def draw(
        self, view: RunView, shards: list[ShardView], now: datetime, *, final: bool
    ) -> RenderableType:
        """The whole view at the console's size; ``final`` drops the height limit."""
        width, height = self.console.size
        width = max(20, width - 1)
        lines: list[RenderableType] = list(header(view, shards, now, width, self.slots))
        room = 10_000 if final else height - len(lines) - 2
        if len(shards) + 1 <= room and len(shards) <= 64:
            lines.append(shard_table(shards, now, width))
            return Group(*lines)
        cells = grid(shards, width)
        lines += [*cells, _line(legend(), width)]
        room -= len(cells) + 1
        if final and view.failure_groups:
            lines += [_line(Text(g, style="red"), width) for g in render.failure_groups(view)]
        elif room >= ATTENTION_MIN_ROWS or final:
            room = 40 if final else max(room, ATTENTION_MIN_ROWS)
            lines += attention(shards, now, width, room)
        return Group(*lines)


class LogLines:
    """Off a terminal: one timestamped line per batch of changes (the run's counts),
    one per attempt that ended badly or started again, never one per pending shard."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: tuple[object, ...] | None = None
        self.seen: dict[int, tuple[int, str]] = {}

    def _stamp(self) -> str:
        return datetime.now().astimezone().strftime("%H:%M:%S")

    def update(self, view: RunView, shards: list[ShardView]) -> None:
        """Print what changed since the last look."""
        stamp, lines = self._stamp(), []
        for s in sorted(shards, key=lambda s: s.index):
            key = (s.attempts, s.status.value if s.status.terminal else "live")
            before = self.seen.get(s.index)
            self.seen[s.index] = key
            if before == key:
                continue
            if s.status.terminal and s.status.value != "succeeded":
                lines.append(f"{stamp}  {render.shard_change(s)}")
            elif before is not None and s.attempts > before[0] > 0:
                lines.append(f"{stamp}  shard {s.index}: attempt {s.attempts} ({s.status.value})")
        agg = view.aggregate
        now = (view.status.value, agg.succeeded, agg.failed, agg.timed_out, agg.cancelled,
               agg.running, agg.pending, view.message, view.queue_position)  # fmt: skip
        if now != self.last:
            self.last = now
            lines.insert(0, f"{stamp}  {render.aggregate_line(view)}")
        merge = view.merge
        if merge is not None:
            key = (merge.attempts, merge.status.value)
            if self.seen.get(-1) != key:
                self.seen[-1] = key
                line = render.merge_line(view)
                lines += [f"{stamp}  {line}"] if line else []
        if lines:
            self.out.write("".join(f"{line}\n" for line in lines))
            self.out.flush()

    def final(self, view: RunView, shards: list[ShardView]) -> None:
        """The end: the shard table for a small run, else the grid; the failure groups;
        the run's line last."""
        lines: list[str] = []
        if len(shards) <= 64:
            lines += render.shard_table(shards, reason=True)
        else:
            lines += [row.plain for row in grid(shards, 100)] + [legend().plain]
        lines += render.failure_groups(view)
        merge = render.merge_line(view)
        lines += [merge] if merge else []
        lines.append(render.aggregate_line(view))
        self.out.write("".join(f"{line}\n" for line in lines))
        self.out.flush()
