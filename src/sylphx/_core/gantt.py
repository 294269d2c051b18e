"""The timeline's layout, with no I/O: a run's attempts as bars on a time scale, the rows
they are drawn on (one per shard, or per group of consecutive shards when they do not all
fit), each row's cells at a given width, and the ticks of the time axis. Shared by the
CLI's ``runs timeline`` (terminal and SVG) and the web dashboard's run page.

Times are seconds from the run's start (the origin). An attempt still open (no
``ended_at``) runs up to ``now``; one never started (no ``started_at``) gets no bar."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sylphx._core.merge import MERGE_INDEX
from sylphx._core.states import AttemptState
from sylphx._core.views import ShardView

from .palette import GAP, SEVERITY

__all__ = [
    "MIN_SPAN",
    "Bar",
    "Cell",
    "Row",
    "Timeline",
    "build",
    "cells",
    "fmt_seconds",
    "rows",
    "ticks",
]

MIN_SPAN = 1.0  # seconds: the narrowest scale (a run of instant shards still gets bars)
# the steps the time axis may tick at, in seconds: 1-2-5, then the clock's own units
NICE_STEPS = (
    *(0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800),
    *(3600, 7200, 10800, 21600, 43200, 86400),
)

Cell = AttemptState | Literal["gap"] | None  # an outcome, waiting between attempts, or empty


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Bar:
    """One started attempt of a shard (``shard`` -1: the merge step) on the time scale."""

    shard: int
    attempt: int
    status: AttemptState
    start: float  # seconds from the origin
    end: float  # its end, or ``now`` while it is open
    open: bool = False  # still running: the bar ends at now
    exit_code: int | None = None
    reason: str | None = None

    @property
    def seconds(self) -> float:
        """How long it ran (so far, when open)."""
        return self.end - self.start


@dataclass(frozen=True)
class Timeline:
    """A run's bars over ``[0, span]`` seconds from ``origin``, for ``shards`` (the merge
    step last, as -1, when the run has one)."""

    origin: datetime
    now: datetime
    span: float
    shards: tuple[int, ...]
    bars: tuple[Bar, ...]

    @property
    def has_merge(self) -> bool:
        """The run has a merge step (drawn as its own row)."""
        return MERGE_INDEX in self.shards

    def of(self, shard: int) -> list[Bar]:
        """The bars of one shard, in attempt order."""
        return [b for b in self.bars if b.shard == shard]

    def to_json(self) -> dict[str, Any]:
        """The attempts with absolute and relative times (``--json``)."""
        return {
            "origin": self.origin.isoformat(),
            "now": self.now.isoformat(),
            "spanSeconds": round(self.span, 3),
            "shards": [i for i in self.shards if i != MERGE_INDEX],
            "merge": self.has_merge,
            "attempts": [
                {
                    "shard": b.shard,
                    "attempt": b.attempt,
                    "status": b.status.value,
                    "exitCode": b.exit_code,
                    "reason": b.reason,
                    "startSeconds": round(b.start, 3),
                    "endSeconds": None if b.open else round(b.end, 3),
                    "open": b.open,
                }
                for b in self.bars
            ],
        }


@dataclass(frozen=True)
class Row:
    """One line of the chart: a shard, a group of consecutive shards, or the merge step."""

    label: str
    shards: tuple[int, ...]
    bars: tuple[Bar, ...]

    @property
    def extra_attempts(self) -> int:
        """Attempts past each shard's first: retries and restarts after a preemption."""
        return len(self.bars) - len({b.shard for b in self.bars})

    @property
    def preempted(self) -> int:
        """Attempts of the row the scheduler stopped."""
        return sum(b.status is AttemptState.PREEMPTED for b in self.bars)


def build(
    shards: Sequence[ShardView],
    merge: ShardView | None = None,
    *,
    now: datetime,
    started_at: datetime | None = None,
) -> Timeline:
    """The bars of ``shards`` (and of the ``merge`` step), from the run's start
    (``started_at``, or its earliest attempt when that came first) to the latest end,
    an open attempt ending at ``now``."""
    now = _utc(now)
    steps = sorted(shards, key=lambda s: s.index) + ([merge] if merge is not None else [])
    starts = [_utc(a.started_at) for s in steps for a in s.history if a.started_at is not None]
    candidates = [*starts, *([_utc(started_at)] if started_at else [])]
    origin = min(candidates, default=now)
    bars: list[Bar] = []
    for step in steps:
        for a in sorted(step.history, key=lambda a: a.attempt):
            if a.started_at is None:
                continue
            start = (_utc(a.started_at) - origin).total_seconds()
            is_open = a.ended_at is None
            end_at = now if a.ended_at is None else _utc(a.ended_at)
            end = max(start, (end_at - origin).total_seconds())
            bars.append(
                Bar(step.index, a.attempt, a.status, start, end, is_open, a.exit_code, a.reason)
            )
    span = max([MIN_SPAN, *(b.end for b in bars)])
    return Timeline(origin, now, span, tuple(s.index for s in steps), tuple(bars))


def _label(group: Sequence[int]) -> str:
    if group[0] == MERGE_INDEX:
        return "merge"
    return str(group[0]) if len(group) == 1 else f"{group[0]}-{group[-1]}"


def rows(timeline: Timeline, max_rows: int | None = None) -> list[Row]:
    """One row per shard, or -- when more than ``max_rows`` rows would be needed -- one
    per group of consecutive shards (as many per group as it takes to fit); the merge
    step always has a row of its own, last."""
    indices = [i for i in timeline.shards if i != MERGE_INDEX]
    room = len(indices) if max_rows is None else max(1, max_rows - timeline.has_merge)
    size = max(1, math.ceil(len(indices) / room)) if indices else 1
    groups = [indices[k : k + size] for k in range(0, len(indices), size)]
    if timeline.has_merge:
        groups.append([MERGE_INDEX])
    return [
        Row(_label(g), tuple(g), tuple(b for b in timeline.bars if b.shard in set(g)))
        for g in groups
    ]


def _columns(bar: Bar, span: float, width: int) -> range:
    """The cells a bar covers: every slice of the scale it overlaps, at least one."""
    first = min(width - 1, max(0, math.floor(bar.start / span * width)))
    last = min(width - 1, max(first, math.ceil(bar.end / span * width) - 1))
    return range(first, last + 1)


def cells(row: Row, span: float, width: int) -> list[Cell]:
    """The row's ``width`` cells over ``[0, span]``: in each the worst outcome of the
    attempts overlapping its slice (see ``palette.SEVERITY``), ``"gap"`` between two of
    them where none ran, None before the first and after the last."""
    out: list[Cell] = [None] * width
    for bar in row.bars:
        for col in _columns(bar, span, width):
            here = out[col]
            if not isinstance(here, AttemptState) or SEVERITY[bar.status] > SEVERITY[here]:
                out[col] = bar.status
    used = [col for col, cell in enumerate(out) if cell is not None]
    if used:
        for col in range(used[0], used[-1]):
            if out[col] is None:
                out[col] = GAP
    return out


def _step(span: float, width: int, min_gap: int) -> float:
    """The smallest nice step whose ticks are at least ``min_gap`` cells apart."""
    for step in NICE_STEPS:
        if step / span * width >= min_gap:
            return step
    step = NICE_STEPS[-1]
    while step / span * width < min_gap:
        step *= 2
    return step


def ticks(span: float, width: int, min_gap: int = 8) -> list[tuple[int, float]]:
    """The axis ticks as (cell, seconds): a nice step (1-2-5 s, 15 s, 30 s, minutes,
    hours) with at least ``min_gap`` cells between two ticks, from 0 up to ``span``."""
    step = _step(span, width, max(1, min_gap))
    out = []
    n = 0
    while (t := round(n * step, 6)) <= span:
        out.append((min(width - 1, round(t / span * width)), t))
        n += 1
    return out


def fmt_seconds(seconds: float) -> str:
    """A tick's or a duration's label: ``0.5s``, ``45s``, ``2m``, ``2m30s``, ``1h``,
    ``1h30m``."""
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    whole = round(seconds)
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest // 60 else f"{hours}h"
