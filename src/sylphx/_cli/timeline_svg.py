"""The timeline as a standalone SVG (``sylphx runs timeline --svg``): one row per shard
(the merge step last), one ``<rect>`` per started attempt carrying ``data-shard``,
``data-attempt``, ``data-status``, ``data-start`` and ``data-end`` (seconds from the
run's start) and a ``<title>`` tooltip; dotted lines for the waits between attempts, the
time axis with its grid, the labels and a legend. Written by hand: no dependency."""

from __future__ import annotations

import itertools
from xml.sax.saxutils import escape, quoteattr

from sylphx._core import gantt
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.states import AttemptState

from .palette import GAP, STATE_LABELS, SVG_COLORS

__all__ = ["render_svg"]

FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
LEFT = 64  # the labels' column
RIGHT = 40  # the "+N" column
CHART = 880  # the time scale's width
ROW = 18
BAR = 12
TOP = 40  # the title
AXIS = 34  # tick marks and labels
LEGEND = 46  # two lines
CHAR = 7.3  # the width of a character of the 12 px monospace font
PREEMPTED_FILL = "url(#preempted)"
LEGEND_STATES = ("succeeded", "failed", "timed_out", "cancelled", "preempted", "running", GAP)


def _attrs(**values: object) -> str:
    return " ".join(
        f"{k.rstrip('_').replace('_', '-')}={quoteattr(str(v))}" for k, v in values.items()
    )


def _x(seconds: float, span: float) -> float:
    return LEFT + seconds / span * CHART


def _tooltip(bar: gantt.Bar) -> str:
    who = "merge step" if bar.shard == MERGE_INDEX else f"shard {bar.shard}"
    detail = ", ".join(
        part
        for part in (
            None if bar.exit_code is None else f"exit {bar.exit_code}",
            bar.reason,
        )
        if part
    )
    outcome = bar.status.value + (f" ({detail})" if detail else "")
    end = "now" if bar.open else gantt.fmt_seconds(bar.end)
    took = gantt.fmt_seconds(bar.seconds)
    return (
        f"{who} · attempt {bar.attempt} · {outcome} · "
        f"{gantt.fmt_seconds(bar.start)} → {end} ({took})"
    )


def _bar(bar: gantt.Bar, y: float, span: float) -> str:
    x = _x(bar.start, span)
    width = max(2.0, bar.seconds / span * CHART)
    fill = PREEMPTED_FILL if bar.status is AttemptState.PREEMPTED else SVG_COLORS[bar.status]
    extra = ' stroke-dasharray="3 2" fill-opacity="0.55"' if bar.open else ""
    attrs = _attrs(
        class_="bar open" if bar.open else "bar",
        x=f"{x:.2f}",
        y=f"{y + (ROW - BAR) / 2:.2f}",
        width=f"{width:.2f}",
        height=BAR,
        rx=2,
        fill=fill,
        stroke=SVG_COLORS[bar.status],
        data_shard=bar.shard,
        data_attempt=bar.attempt,
        data_status=bar.status.value,
        data_start=f"{bar.start:.3f}",
        data_end=f"{bar.end:.3f}",
        data_open=str(bar.open).lower(),
    )
    return f"<rect {attrs}{extra}><title>{escape(_tooltip(bar))}</title></rect>"


def _gaps(bars: list[gantt.Bar], y: float, span: float) -> list[str]:
    """Dotted lines over the waits between one attempt's end and the next one's start."""
    out = []
    mid = y + ROW / 2
    for before, after in itertools.pairwise(bars):
        if after.start > before.end:
            x1, x2 = _x(before.end, span), _x(after.start, span)
            out.append(
                f'<line x1="{x1:.2f}" y1="{mid}" x2="{x2:.2f}" y2="{mid}"'
                f' stroke="{SVG_COLORS[GAP]}" stroke-dasharray="2 3"/>'
            )
    return out


def _axis(span: float, bottom: float) -> list[str]:
    out = []
    for _, seconds in gantt.ticks(span, CHART, min_gap=60):
        x = _x(seconds, span)
        out.append(
            f'<line x1="{x:.2f}" y1="{TOP - 4}" x2="{x:.2f}" y2="{bottom + 4}"'
            ' stroke="#d0d7de" stroke-width="0.6"/>'
        )
        label = escape(gantt.fmt_seconds(seconds))
        out.append(f'<text x="{x:.2f}" y="{bottom + 18}" text-anchor="middle">{label}</text>')
    out.append(
        f'<line x1="{LEFT}" y1="{bottom + 4}" x2="{LEFT + CHART}" y2="{bottom + 4}"'
        ' stroke="#57606a"/>'
    )
    return out


def _legend(y: float) -> list[str]:
    """The swatches and their labels, in lines that fit the picture's width."""
    out = []
    x, right = float(LEFT), LEFT + CHART
    entries: list[tuple[str | None, str]] = [(s, STATE_LABELS[s]) for s in LEGEND_STATES]
    entries.append((None, "+N retries of the row"))
    for state, text in entries:
        size = 19 + CHAR * len(text)
        if x + size > right:
            x, y = float(LEFT), y + 16
        label = escape(text)
        if state is None:
            out.append(f'<text x="{x:.1f}" y="{y + 9}" fill="#9a6700">{label}</text>')
        elif state == GAP:
            out.append(
                f'<line x1="{x:.1f}" y1="{y + 5}" x2="{x + 14:.1f}" y2="{y + 5}"'
                f' stroke="{SVG_COLORS[GAP]}" stroke-dasharray="2 3"/>'
            )
        else:
            fill = PREEMPTED_FILL if state == "preempted" else SVG_COLORS[state]
            out.append(
                f'<rect class="swatch" x="{x:.1f}" y="{y}" width="14" height="10" rx="2"'
                f' fill="{fill}" stroke="{SVG_COLORS[state]}"/>'
            )
        if state is not None:
            out.append(f'<text x="{x + 19:.1f}" y="{y + 9}">{label}</text>')
        x += size + 18
    return out


def render_svg(timeline: gantt.Timeline, *, title: str = "") -> str:
    """The whole picture as one SVG document (UTF-8 text)."""
    span = timeline.span
    height = TOP + ROW * len(timeline.shards) + AXIS + LEGEND
    width = LEFT + CHART + RIGHT
    body = [
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="22" font-weight="bold">{escape(title)}</text>',
    ]
    bottom = TOP + ROW * len(timeline.shards)
    for k in range(len(timeline.shards)):
        y = TOP + k * ROW
        if k % 2:
            body.append(f'<rect x="{LEFT}" y="{y}" width="{CHART}" height="{ROW}" fill="#f6f8fa"/>')
    body += _axis(span, bottom)
    for k, shard in enumerate(timeline.shards):
        y = TOP + k * ROW
        label = "merge" if shard == MERGE_INDEX else str(shard)
        body.append(
            f'<text x="{LEFT - 8}" y="{y + ROW - 5}" text-anchor="end">{escape(label)}</text>'
        )
        bars = timeline.of(shard)
        body += _gaps(bars, y, span)
        body += [_bar(bar, y, span) for bar in bars]
        extra = len(bars) - 1
        if extra > 0:
            body.append(
                f'<text x="{LEFT + CHART + 6}" y="{y + ROW - 5}" fill="#9a6700">+{extra}</text>'
            )
    body += _legend(bottom + AXIS + 6)
    hatch = SVG_COLORS["preempted"]
    defs = (
        '<defs><pattern id="preempted" width="6" height="6" patternUnits="userSpaceOnUse"'
        ' patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="{hatch}" fill-opacity="0.45"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{hatch}" stroke-width="3"/>'
        "</pattern></defs>"
    )
    head = _attrs(
        xmlns="http://www.w3.org/2000/svg",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        font_family=FONT,
        font_size=12,
        fill="#24292f",
    )
    return "\n".join(
        ['<?xml version="1.0" encoding="UTF-8"?>', f"<svg {head}>", defs, *body, "</svg>", ""]
    )
