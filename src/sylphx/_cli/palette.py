"""One palette for every state the CLI draws (the timeline, the live view): a rich style,
a glyph for colour terminals, an ASCII glyph for plain text (no colour: the glyph alone
tells the outcomes apart), an SVG colour, and which outcome wins a shared cell. The
glyphs, colours and severities are :mod:`sylphx._core.palette`'s (the web dashboard
draws with the same); the rich styles are the terminal's own.

Keys are state values, so ``AttemptState``, ``ShardState`` and ``RunState`` members (all
``StrEnum``) look up directly: ``STATE_STYLES[shard.status]``."""

from __future__ import annotations

from sylphx._core.palette import (
    GAP,
    PLAIN_GLYPHS,
    SEVERITY,
    SHARD_GLYPHS,
    STATE_GLYPHS,
    STATE_LABELS,
    SVG_COLORS,
)

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

# one colour per shard index (modulo its length) for ``runs logs --all``'s ``[7]`` prefix:
# the same shard always looks the same
SHARD_COLOURS = (
    "cyan", "green", "yellow", "blue", "magenta", "red",
    "bright_cyan", "bright_green", "bright_yellow", "bright_blue", "bright_magenta", "bright_red",
)  # fmt: skip


def style_for(state: str) -> str:
    """The rich style of a state value ("" for one the palette does not know)."""
    return STATE_STYLES.get(str(state), "")
