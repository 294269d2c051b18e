"""Executors: where shard processes actually run. One small interface, several backends."""

from typing import TYPE_CHECKING, Any

from .base import Executor, Exit, LaunchRequest, Mount

if TYPE_CHECKING:
    from sylphx._server.executors.local.executor import LocalExecutor


def __getattr__(name: str) -> Any:
    """``LocalExecutor`` on first use: a Ray node's task imports the envelope's modules
    of this package, never the local executor (nor the image policy and pydantic it
    brings: ~0.2 s of CPU for every new Ray worker)."""
    if name == "LocalExecutor":
        from sylphx._server.executors.local.executor import LocalExecutor

        return LocalExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Executor", "Exit", "LaunchRequest", "LocalExecutor", "Mount"]
