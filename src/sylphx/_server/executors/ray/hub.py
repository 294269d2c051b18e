"""The log hub: one actor on the control plane's node that every Ray shard talks to.

Shards ship their output to it in chunks (it appends them to the attempt's log files, so
nothing relies on a shared filesystem for logs), tell it when their process started, and
get the signal the control plane wants delivered in the reply to each chunk.
"""

from __future__ import annotations

import threading
import time

from sylphx._server.executors.base import Signal

_RANK: dict[str | None, int] = {None: 0, "term": 1, "kill": 2}


class LogHub:
    """Appends shipped chunks to log files; hands out pending signals; remembers each
    attempt's node, when its process started and when it last shipped (every ~0.2 s: the
    last moment it was known alive, the end of a window lost with its node)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._signals: dict[str, Signal] = {}
        self._nodes: dict[str, str] = {}
        self._starts: dict[str, float] = {}  # handle -> epoch its process started
        self._seen: dict[str, float] = {}  # handle -> epoch of its last chunk

    def started(self, handle: str, node_id: str, epoch: float) -> None:
        """An attempt's process started on ``node_id``."""
        with self._lock:
            self._nodes[handle] = node_id
            self._starts[handle] = epoch

    def take_starts(self) -> dict[str, float]:
        """The starts reported since the last call."""
        with self._lock:
            starts, self._starts = self._starts, {}
            return starts

    def push(
        self, handle: str, node_id: str, paths: tuple[str, str], out: bytes, err: bytes
    ) -> Signal | None:
        for path, data in zip(paths, (out, err), strict=True):
            if data:
                with open(path, "ab") as fh:
                    fh.write(data)
        with self._lock:
            self._nodes[handle] = node_id
            self._seen[handle] = time.time()
            return self._signals.get(handle)

    def signal(self, handle: str, sig: Signal) -> None:
        with self._lock:
            if _RANK[sig] > _RANK[self._signals.get(handle)]:
                self._signals[handle] = sig

    def forget(self, handle: str) -> tuple[str | None, float | None]:
        """Drop the attempt's state; returns the node it last reported from and when."""
        with self._lock:
            self._signals.pop(handle, None)
            self._starts.pop(handle, None)
            return self._nodes.pop(handle, None), self._seen.pop(handle, None)

    def forget_many(self, handles: list[str]) -> None:
        for handle in handles:
            self.forget(handle)

    def ping(self) -> bool:
        return True
