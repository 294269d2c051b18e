"""Executors: where shard processes actually run. One small interface, several backends."""

from sylphx._server.executors.local.executor import LocalExecutor

from .base import Executor, Exit, LaunchRequest, Mount

__all__ = ["Executor", "Exit", "LaunchRequest", "LocalExecutor", "Mount"]
