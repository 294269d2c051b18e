"""``sylphx runs timeline``: every shard's attempts over time, as a Gantt chart in the
terminal (rich), as a standalone SVG (``--svg``) or as JSON (``--json``).

The layout (bars, rows, cells, ticks) is :mod:`.gantt`; this module draws it as lines of
rich ``Text`` cut to the width: in colour on a terminal, in ASCII glyphs without colour
(``NO_COLOR``, ``--no-color``, or off a terminal)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from sylphx._client.runs import RunsClient
from sylphx._core import gantt
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.views import RunView

from .common import echo_json, state
from .completion import complete_run_id
from .palette import GAP, PLAIN_GLYPHS, STATE_GLYPHS, STATE_LABELS, STATE_STYLES
from .timeline_svg import render_svg

__all__ = ["draw", "heading", "lines", "timeline"]

MIN_BAR_WIDTH = 10  # cells: narrower terminals get the chart cropped, never wrapped
CHROME_LINES = 6  # heading, axis, tick labels, legend (up to two lines), the prompt
LEGEND_STATES = ("succeeded", "failed", "timed_out", "cancelled", "preempted", "running", GAP)


def heading(view: RunView, timeline: gantt.Timeline) -> str:
    """The run, its status and what the chart holds: shards, attempts, the span."""
    bars = timeline.bars
    retried = len(bars) - len({b.shard for b in bars})
    preempted = sum(b.status == "preempted" for b in bars)
    shards = sum(i != MERGE_INDEX for i in timeline.shards)
    parts = [f"{view.id}  {view.status.value}", f"{shards} shards"]
    parts.append(f"{len(bars)} attempts")
    if retried:
        parts.append(f"{retried} retries")
    if preempted:
        parts.append(f"{preempted} preempted")
    parts.append(gantt.fmt_seconds(timeline.span))
    if any(b.open for b in bars):
        parts.append("still running: the right edge is now")
    return " · ".join(parts)


def _axis(ticks: list[tuple[int, float]], width: int, color: bool) -> tuple[str, str]:
    """The axis line (a mark at each tick) and the tick labels under it."""
    rule, mark = ("─", "┬") if color else ("-", "+")
    axis = [rule] * width
    labels = [" "] * width
    free = 0  # the first cell a label may start at
    for col, seconds in ticks:
        axis[col] = mark
        text = gantt.fmt_seconds(seconds)
        at = min(col, width - len(text))
        if at < free or at < 0:
            continue
        labels[at : at + len(text)] = list(text)
        free = at + len(text) + 1
    return "".join(axis), "".join(labels).rstrip()


def _legend(width: int, color: bool, indent: int) -> list[Text]:
    glyphs = STATE_GLYPHS if color else PLAIN_GLYPHS
    entries = [
        Text.assemble((glyphs[s], STATE_STYLES[s] if color else ""), f" {STATE_LABELS[s]}", end="")
        for s in LEGEND_STATES
    ]
    entries.append(Text("+N retries of the row", end=""))
    out: list[Text] = []
    line = Text(" " * indent, end="")
    for entry in entries:
        if line.cell_len > indent and line.cell_len + 2 + entry.cell_len > width:
            out.append(line)
            line = Text(" " * indent, end="")
        line.append("  " if line.cell_len > indent else "")
        line.append_text(entry)
    out.append(line)
    return out


def _cells_text(cells: Sequence[gantt.Cell], color: bool) -> Text:
    glyphs = STATE_GLYPHS if color else PLAIN_GLYPHS
    text = Text(end="")
    for cell, run in itertools.groupby(cells):  # one span per run of equal cells
        n = len(list(run))
        if cell is None:
            text.append(" " * n)
        else:
            text.append(glyphs[cell] * n, STATE_STYLES[cell] if color else None)
    return text


def lines(
    timeline: gantt.Timeline,
    *,
    width: int,
    color: bool,
    max_rows: int | None = None,
    title: str = "",
) -> list[Text]:
    """The chart as lines of at most ``width`` cells: ``title``, a row per shard (or per
    group of shards, to fit ``max_rows``; the merge step last), the time axis, the legend.
    Without ``color`` the lines carry no style, only ASCII glyphs."""
    rows = gantt.rows(timeline, max_rows)
    label_width = max(len(r.label) for r in rows) if rows else 1
    notes = [f"+{r.extra_attempts}" if r.extra_attempts else "" for r in rows]
    note_width = max(map(len, notes), default=0)
    note_width += 1 if note_width else 0
    bar_width = max(MIN_BAR_WIDTH, width - label_width - 1 - note_width)
    out = [Text(title, style="bold" if color else "", end="")] if title else []
    for row, note in zip(rows, notes, strict=True):
        line = Text(row.label.rjust(label_width) + " ", end="")
        if color and row.label == "merge":
            line.stylize("bold")
        line.append_text(_cells_text(gantt.cells(row, timeline.span, bar_width), color))
        if note:
            line.append(" " + note.ljust(note_width - 1), "yellow" if color else None)
        out.append(line)
    axis, labels = _axis(gantt.ticks(timeline.span, bar_width), bar_width, color)
    pad = " " * (label_width + 1)
    out.append(Text(pad + axis, style="bright_black" if color else "", end=""))
    out.append(Text(pad + labels, end=""))
    out.extend(_legend(width, color, label_width + 1))
    for line in out:
        line.no_wrap = True
        line.overflow = "crop"
        line.truncate(width)
        line.rstrip()
    return out


def draw(console: Console, chart: Sequence[Text]) -> None:
    """Print the chart's lines, each cut to the console's width (never wrapped)."""
    for line in chart:
        console.print(line, no_wrap=True, overflow="crop", crop=True, soft_wrap=False)


def _console(no_color: bool, width: int | None) -> Console:
    return Console(
        file=sys.stdout,
        width=width,
        no_color=True if no_color else None,  # None: rich reads NO_COLOR
        highlight=False,
        markup=False,
        emoji=False,
    )


EXAMPLES = """

\b
Examples:
  sylphx runs timeline wrk_01m87…                 # in the terminal
  sylphx runs timeline wrk_01m87… --svg run.svg   # the same picture as SVG
  sylphx runs timeline wrk_01m87… --json | jq '.attempts[] | select(.status=="failed")'
  NO_COLOR=1 sylphx runs timeline wrk_01m87… > timeline.txt
"""


@click.command("timeline", epilog=EXAMPLES)
@click.argument("run_id", shell_complete=complete_run_id)
@click.option(
    "--svg",
    "svg_path",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path),
    metavar="FILE",
    help="Write the chart as a standalone SVG (one row per shard; - for stdout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the attempts and their times.")
@click.option("--no-color", is_flag=True, help="No colour, ASCII glyphs (as NO_COLOR=1).")
@click.option(
    "--width", type=click.IntRange(20, 1000), help="Columns to fill (default: the terminal's)."
)
@click.option(
    "--rows",
    "max_rows",
    type=click.IntRange(1, 258),
    help="Rows at most: consecutive shards share a row to fit"
    " (default: the terminal's height; off a terminal, one row per shard).",
)
def timeline(
    run_id: str,
    svg_path: Path | None,
    as_json: bool,
    no_color: bool,
    width: int | None,
    max_rows: int | None,
) -> None:
    """Draw every shard's attempts over time: a Gantt chart of the run.

    One row per shard (the merge step last), time from the run's start left to right.
    Each attempt is a bar coloured by its outcome -- succeeded, failed, timed out,
    cancelled, preempted (shaded) -- and a running one is open up to now; the dots
    between two bars are the wait before a retry. When the shards do not all fit the
    terminal's height, consecutive shards share a row ("0-7") and a cell shows the worst
    outcome in its time slice. The number after a row counts its retries: attempts past
    each shard's first, after a failure or a preemption."""
    run = RunsClient.get(state().config(), run_id)
    shards = run.shards()
    view = run.view
    chart = gantt.build(shards, view.merge, now=datetime.now(UTC), started_at=view.started_at)
    if as_json:
        echo_json({"runId": view.id, "status": view.status.value, **chart.to_json()})
        return
    if svg_path is not None:
        svg = render_svg(chart, title=heading(view, chart))
        if str(svg_path) == "-":
            click.echo(svg, nl=False)
            return
        svg_path.write_text(svg, encoding="utf-8")
        click.echo(f"wrote {svg_path} ({len(chart.bars)} attempts)", err=True)
        return
    console = _console(no_color, width)
    color = console.color_system is not None and not console.no_color
    if max_rows is None and console.is_terminal:
        max_rows = max(4, console.height - CHROME_LINES)
    title = heading(view, chart)
    draw(console, lines(chart, width=console.width, color=color, max_rows=max_rows, title=title))
