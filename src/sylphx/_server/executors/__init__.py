"""Executors: where shard processes actually run. One small interface, several backends."""

from .base import Executor, Exit, LaunchRequest, Mount
from .local import LocalExecutor

__all__ = ["Executor", "Exit", "LaunchRequest", "LocalExecutor", "Mount"]
