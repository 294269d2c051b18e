"""What the pages show, computed from the services' views: a run's header and shard
cells, its timeline as drawable rows, the usage chart's bars. No HTTP and no HTML here:
the templates draw these (escaped)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sylphx._core import gantt
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.palette import SEVERITY, SHARD_GLYPHS, STATE_COLORS, STATE_LABELS
from sylphx._core.views import RunView, ShardView, UsageReport

__all__ = [
    "ChartBar",
    "UsageChart",
    "bars_of",
    "cell",
    "day_windows",
    "header",
    "timeline",
    "usage_chart",
]

ENDED = ("succeeded", "failed", "timed_out", "cancelled")
TIMELINE_ROWS = 64  # the Gantt chart's most rows: more shards share a row, in index order
CHART_W, ROW_H, LABEL_W = 900, 12, 64


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def header(run: RunView, now: datetime) -> dict[str, object]:
    """The aggregate header: counts, progress, elapsed, compute-seconds, the message."""
    agg = run.aggregate
    done = agg.succeeded + agg.failed + agg.timed_out + agg.cancelled
    elapsed = 0.0
    if run.started_at is not None:
        end = _utc(run.ended_at) if run.ended_at else now
        elapsed = max(0.0, (end - _utc(run.started_at)).total_seconds())
    return {
        "id": run.id,
        "status": run.status.value,
        "active": not run.status.terminal,
        "counts": [
            (name, getattr(agg, name))
            for name in ("pending", "running", "succeeded", "failed", "timed_out", "cancelled")
        ],
        "total": agg.total,
        "done": done,
        "percent": round(100 * done / agg.total) if agg.total else 100,
        "elapsed": elapsed,
        # elapsed grows with no write to the run: the page counts it on between updates
        "ticking": run.started_at is not None and run.ended_at is None,
        "compute_seconds": run.compute_seconds,
        "message": run.message,
        "queue_position": run.queue_position,
        "cancel_requested": run.cancel_requested,
        "reopened": run.reopened,
        "merge": run.merge.status.value if run.merge is not None else None,
    }


def cell(shard: ShardView) -> tuple[str, str, str]:
    """A grid cell: (state, glyph, hover text: index, status, exit, attempts, duration)."""
    state = shard.status.value
    parts = [f"shard {shard.index}", state]
    if shard.exit_code is not None:
        parts.append(f"exit {shard.exit_code}")
    if shard.reason:
        parts.append(shard.reason)
    parts.append(f"{shard.attempts} attempt{'s' if shard.attempts != 1 else ''}")
    if shard.preemptions:
        parts.append(f"{shard.preemptions} preempted")
    if shard.duration_seconds is not None:
        parts.append(gantt.fmt_seconds(shard.duration_seconds))
    return state, SHARD_GLYPHS.get(state, "?"), " · ".join(parts)


@dataclass(frozen=True)
class DrawnBar:
    """One attempt's rectangle on the Gantt chart."""

    x: float
    width: float
    state: str
    color: str
    hatched: bool
    title: str


@dataclass(frozen=True)
class DrawnRow:
    """One row of the Gantt chart: its label, its bars (worst drawn last), the waits."""

    label: str
    y: float
    bars: list[DrawnBar]
    waits: list[tuple[float, float]]
    extra: int


@dataclass
class Chart:
    """The Gantt chart of a run, ready to draw."""

    rows: list[DrawnRow]
    ticks: list[tuple[float, str]]
    width: int
    height: int
    legend: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def has_bars(self) -> bool:
        """Some attempt has started: there is something to draw."""
        return any(row.bars for row in self.rows)


def _x(seconds: float, span: float) -> float:
    return round(LABEL_W + seconds / span * CHART_W, 2)


def _title(bar: gantt.Bar) -> str:
    who = "merge step" if bar.shard == MERGE_INDEX else f"shard {bar.shard}"
    detail = [f"exit {bar.exit_code}"] if bar.exit_code is not None else []
    detail += [bar.reason] if bar.reason else []
    outcome = bar.status.value + (f" ({', '.join(detail)})" if detail else "")
    end = "now" if bar.open else gantt.fmt_seconds(bar.end)
    return (
        f"{who} · attempt {bar.attempt} · {outcome} · {gantt.fmt_seconds(bar.start)} → {end}"
        f" ({gantt.fmt_seconds(bar.seconds)})"
    )


def bars_of(row: gantt.Row, span: float) -> list[DrawnBar]:
    """A row's bars, the worst outcome drawn last (on top where they overlap)."""
    ordered = sorted(row.bars, key=lambda b: (SEVERITY[b.status], b.start))
    out = []
    for b in ordered:
        x = _x(b.start, span)
        width = max(1.5, _x(b.end, span) - x)
        state = b.status.value
        out.append(
            DrawnBar(
                x, round(width, 2), state, STATE_COLORS[state], state == "preempted", _title(b)
            )
        )
    return out


def _waits(row: gantt.Row, span: float) -> list[tuple[float, float]]:
    """The waits between one shard's attempts (a retry's backoff, a preemption's queue)."""
    out = []
    for shard in sorted({b.shard for b in row.bars}):
        mine = sorted((b for b in row.bars if b.shard == shard), key=lambda b: b.attempt)
        for before, after in itertools.pairwise(mine):
            if after.start > before.end:
                out.append((_x(before.end, span), _x(after.start, span)))
    return out


def timeline(
    shards: Sequence[ShardView], merge: ShardView | None, started_at: datetime | None, now: datetime
) -> Chart:
    """The Gantt chart: every started attempt on the run's time scale, one row per shard
    (or per group of consecutive shards past ``TIMELINE_ROWS``), the merge step last."""
    merge = merge if merge is not None and merge.history else None
    layout = gantt.build(shards, merge, now=now, started_at=started_at)
    rows = []
    for k, row in enumerate(gantt.rows(layout, TIMELINE_ROWS)):
        y = 8 + k * ROW_H
        rows.append(
            DrawnRow(
                row.label,
                y,
                bars_of(row, layout.span),
                _waits(row, layout.span),
                row.extra_attempts,
            )
        )
    height = 8 + len(rows) * ROW_H
    ticks = [
        (_x(seconds, layout.span), gantt.fmt_seconds(seconds))
        for _, seconds in gantt.ticks(layout.span, CHART_W, 80)
    ]
    legend = [
        (s, STATE_COLORS[s], STATE_LABELS[s])
        for s in ("succeeded", "failed", "timed_out", "cancelled", "preempted", "running")
    ]
    return Chart(rows, ticks, LABEL_W + CHART_W + 48, height + 28, legend)


@dataclass(frozen=True)
class ChartBar:
    """One segment of a day's stacked bar: a tier's compute-seconds that day."""

    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass
class UsageChart:
    """Compute-seconds by day, stacked by machine tier."""

    bars: list[ChartBar]
    days: list[tuple[float, str]]
    scale: list[tuple[float, str]]
    tiers: list[tuple[str, str]]
    width: int = 900
    height: int = 260
    total: float = 0.0


TIER_COLORS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442")


def usage_chart(days: Sequence[tuple[datetime, UsageReport]]) -> UsageChart:
    """The stacked bars of ``days`` (each day's report), a colour per tier."""
    tiers = sorted({m.machine for _, r in days for m in r.by_machine})
    colors = {t: TIER_COLORS[i % len(TIER_COLORS)] for i, t in enumerate(tiers)}
    top = max((sum(m.compute_seconds for m in r.by_machine) for _, r in days), default=0.0)
    top = max(top, 1.0)
    left, base, plot_h = 70.0, 220.0, 200.0
    step = (900 - left - 10) / max(1, len(days))
    chart = UsageChart([], [], [], [(t, colors[t]) for t in tiers])
    for k, (day, report) in enumerate(days):
        x = left + k * step + step * 0.15
        y = base
        for m in sorted(report.by_machine, key=lambda m: m.machine):
            h = m.compute_seconds / top * plot_h
            y -= h
            title = f"{day:%Y-%m-%d} · {m.machine} · {m.compute_seconds:,.1f} compute-seconds"
            chart.bars.append(ChartBar(x, y, step * 0.7, h, colors[m.machine], title))
        chart.days.append((x + step * 0.35, f"{day:%m-%d}"))
        chart.total += sum(m.compute_seconds for m in report.by_machine)
    chart.scale = [(base - f * plot_h, f"{top * f:,.0f}") for f in (0, 0.25, 0.5, 0.75, 1)]
    return chart


def day_windows(now: datetime, count: int) -> list[tuple[datetime, datetime]]:
    """The last ``count`` UTC days, today last: [start, end) each."""
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    out = []
    for k in range(count - 1, -1, -1):
        start = today - timedelta(days=k)
        out.append((start, start + timedelta(days=1)))
    return out
