"""One look per state, for every picture of a run: the CLI's timeline and live view, the
SVG timeline and the web dashboard. A glyph per state (so a picture reads without colour
too), one colour per state from a colour-blind-safe palette (Okabe & Ito's: no two
outcomes told apart by red against green alone), and which outcome wins a shared cell.

Keys are state values, so ``AttemptState``, ``ShardState`` and ``RunState`` members (all
``StrEnum``) look up directly: ``STATE_COLORS[shard.status]``. The CLI's rich styles are
its own (``sylphx._cli.palette``): a terminal's named colours."""

from __future__ import annotations

from typing import Final, Literal

from .states import AttemptState

__all__ = [
    "GAP",
    "PLAIN_GLYPHS",
    "SEVERITY",
    "SHARD_GLYPHS",
    "STATE_COLORS",
    "STATE_GLYPHS",
    "STATE_LABELS",
    "SVG_COLORS",
]

GAP: Final[Literal["gap"]] = (
    "gap"  # between two attempts of a row: waiting for a retry (its backoff) or capacity
)

# the cell glyphs of the colour rendering: a bar is coloured; a preempted one also shaded
STATE_GLYPHS: dict[str, str] = {
    "succeeded": "█",
    "failed": "█",
    "timed_out": "█",
    "cancelled": "█",
    "preempted": "▒",
    "running": "█",
    "starting": "█",
    GAP: "·",
}

# the same without colour: ASCII, one glyph per outcome
PLAIN_GLYPHS: dict[str, str] = {
    "succeeded": "=",
    "failed": "x",
    "timed_out": "t",
    "cancelled": "c",
    "preempted": "p",
    "running": ">",
    "starting": ">",
    GAP: ".",
}

# a shard's cell in a grid (the live view's, the dashboard's): one state, not a span of
# time; a glyph per state, so the grid reads without colour too
SHARD_GLYPHS: dict[str, str] = {
    "pending": "·",
    "starting": "▹",
    "running": "▸",
    "succeeded": "■",
    "failed": "✗",
    "timed_out": "◷",
    "cancelled": "⊘",
    "skipped": "-",
}

STATE_LABELS: dict[str, str] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "timed out",
    "cancelled": "cancelled",
    "preempted": "preempted",
    "running": "running (to now)",
    "starting": "starting",
    GAP: "waiting to retry",
}

# fills on a light background, Okabe & Ito's colour-blind-safe set (and greys): the SVG
# timeline's bars and the dashboard's cells, badges and chart; a preempted bar is hatched
STATE_COLORS: dict[str, str] = {
    "succeeded": "#009e73",  # bluish green
    "failed": "#d55e00",  # vermillion
    "timed_out": "#cc79a7",  # reddish purple
    "cancelled": "#8c959f",  # grey
    "preempted": "#e69f00",  # orange
    "running": "#56b4e9",  # sky blue
    "starting": "#0072b2",  # blue
    "pending": "#d0d7de",  # light grey
    "queued": "#d0d7de",
    "skipped": "#eaeef2",
    "partial": "#e69f00",  # orange: some shards failed
    GAP: "#8c959f",
}
SVG_COLORS = STATE_COLORS  # the name the SVG timeline has always used

# which outcome a cell shows when several attempts share its time slice: the worst
SEVERITY: dict[AttemptState, int] = {
    AttemptState.FAILED: 6,
    AttemptState.TIMED_OUT: 5,
    AttemptState.PREEMPTED: 4,
    AttemptState.CANCELLED: 3,
    AttemptState.RUNNING: 2,
    AttemptState.STARTING: 1,
    AttemptState.SUCCEEDED: 0,
}
