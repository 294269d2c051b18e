"""One palette for every state the CLI draws (the timeline, the live view): a rich style,
a glyph for colour terminals, an ASCII glyph for plain text (no colour: the glyph alone
tells the outcomes apart), an SVG colour, and which outcome wins a shared cell.

Keys are state values, so ``AttemptState``, ``ShardState`` and ``RunState`` members (all
``StrEnum``) look up directly: ``STATE_STYLES[shard.status]``."""

from __future__ import annotations

from typing import Final, Literal

from sylphx._core.states import AttemptState

__all__ = [
    "GAP",
    "PLAIN_GLYPHS",
    "SEVERITY",
    "SHARD_COLOURS",
    "SHARD_GLYPHS",
    "STATE_GLYPHS",
    "STATE_LABELS",
    "STATE_STYLES",
    "SVG_COLORS",
    "style_for",
]

GAP: Final[Literal["gap"]] = (
    "gap"  # between two attempts of a row: waiting for a retry (its backoff) or capacity
)

# rich styles, by state value (attempts, shards and runs share their names)
STATE_STYLES: dict[str, str] = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "magenta",
    "cancelled": "bright_black",
    "preempted": "yellow",
    "running": "cyan",
    "starting": "blue",
    "pending": "dim",
    "queued": "dim",
    "skipped": "dim",
    "partial": "dark_orange",
    GAP: "bright_black",
}

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

# a shard's cell in the live view's grid (one state, not a span of time): a glyph per state,
# so the grid reads without colour too
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

# one colour per shard index (modulo its length) for ``runs logs --all``'s ``[7]`` prefix:
# the same shard always looks the same
SHARD_COLOURS = (
    "cyan", "green", "yellow", "blue", "magenta", "red",
    "bright_cyan", "bright_green", "bright_yellow", "bright_blue", "bright_magenta", "bright_red",
)  # fmt: skip

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

# fills of the SVG timeline (a light background); a preempted bar is also hatched
SVG_COLORS: dict[str, str] = {
    "succeeded": "#2da44e",
    "failed": "#cf222e",
    "timed_out": "#8250df",
    "cancelled": "#8c959f",
    "preempted": "#d4a72c",
    "running": "#1f9bbd",
    "starting": "#3b6fd9",
    GAP: "#8c959f",
}

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


def style_for(state: str) -> str:
    """The rich style of a state value ("" for one the palette does not know)."""
    return STATE_STYLES.get(str(state), "")
