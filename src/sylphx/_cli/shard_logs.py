"""``sylphx runs logs --all``: every shard's lines from the one NDJSON stream, each line
prefixed ``[INDEX] `` (in a stable colour per index on a terminal) and, if asked, the time
the control plane read it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC
from typing import BinaryIO

import click

from sylphx._core.views import LogLine, RunView

from .palette import SHARD_COLOURS

__all__ = [
    "PALETTE",
    "colour_wanted",
    "default_shard",
    "format_line",
    "usage_problem",
    "write_lines",
]

PALETTE = SHARD_COLOURS  # one colour per shard index (see palette)


def usage_problem(
    *,
    many: bool,
    shard: int | None,
    merge: bool,
    attempt: int | None,
    failed: bool,
    lined: bool,
) -> str | None:
    """What is wrong with the options of ``runs logs`` (None: nothing). ``many``: --all
    or --indices; ``lined``: the lines come from the all-shard stream."""
    if shard is not None and merge:
        return "give --shard INDEX or --merge, not both"
    if many and (shard is not None or merge or attempt is not None):
        return "--all reads every shard's newest attempt: drop --shard, --merge and --attempt"
    if failed and not many:
        return "--failed picks among every shard's logs: add --all"
    if lined and (merge or attempt is not None):
        return "--prefix and --timestamps need --shard INDEX or --all (not --merge, --attempt)"
    return None


def default_shard(view: RunView) -> int:
    """The shard ``runs logs`` shows without --shard: 0 of a one-shard run; for more
    shards a usage error (exit 2) asks for one."""
    n = view.spec.parallelism
    if n != 1:
        raise click.UsageError(
            f"run {view.id} has {n} shards: pass --shard INDEX (0-{n - 1}) or --all"
        )
    return 0


def colour_wanted(out: BinaryIO, no_color: bool = False) -> bool:
    """Colour only on a terminal, and never with ``--no-color`` or ``NO_COLOR`` set."""
    return not no_color and not os.environ.get("NO_COLOR") and out.isatty()


def format_line(line: LogLine, *, prefix: bool, timestamps: bool, colour: bool) -> str:
    """``[7] 2026-01-02T03:04:05.678Z text`` (each part if asked), with its newline."""
    head = ""
    if prefix:
        tag = f"[{line.shard}]"
        head = (click.style(tag, fg=PALETTE[line.shard % len(PALETTE)]) if colour else tag) + " "
    if timestamps:
        stamp = line.ts.astimezone(UTC).isoformat(timespec="milliseconds")
        head += stamp.replace("+00:00", "Z") + " "
    return f"{head}{line.line}\n"


def write_lines(
    lines: Iterable[LogLine], out: BinaryIO, *, prefix: bool, timestamps: bool, colour: bool
) -> int:
    """Write each line as it comes (flushed: a follower sees it at once); the count."""
    written = 0
    for line in lines:
        text = format_line(line, prefix=prefix, timestamps=timestamps, colour=colour)
        out.write(text.encode("utf-8", errors="replace"))
        out.flush()
        written += 1
    return written
