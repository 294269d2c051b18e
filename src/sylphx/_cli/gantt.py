"""The timeline's layout: it lives in :mod:`sylphx._core.gantt` (pure, shared with the web
dashboard); this name stays for the CLI's modules and their tests."""

from __future__ import annotations

from sylphx._core.gantt import (
    MIN_SPAN,
    NICE_STEPS,
    Bar,
    Cell,
    Row,
    Timeline,
    build,
    cells,
    fmt_seconds,
    rows,
    ticks,
)

__all__ = [
    "MIN_SPAN",
    "NICE_STEPS",
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
