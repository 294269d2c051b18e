"""The I/O primitives the async SDK waits with (:mod:`._io_sync` is their blocking twin,
used by the SDK generated from the async one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio

__all__ = ["run_blocking", "sleep"]

T = TypeVar("T")


async def sleep(seconds: float) -> None:
    """Pause without blocking the event loop."""
    await anyio.sleep(seconds)


async def run_blocking(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` (e.g. starting the embedded server) off the event loop."""
    return await anyio.to_thread.run_sync(fn)
