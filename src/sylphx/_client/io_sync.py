"""The I/O primitives the sync SDK waits with: the blocking twins of :mod:`._io_async`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["run_blocking", "sleep"]

T = TypeVar("T")


def sleep(seconds: float) -> None:
    """Pause the calling thread."""
    time.sleep(seconds)


def run_blocking(fn: Callable[[], T]) -> T:
    """Run ``fn`` here (the caller's thread may block)."""
    return fn()
