"""The parts of the Ray executor that run inside the cluster.

``LogHub`` is one actor pinned to the control plane's node. Shards ship their
output to it in chunks while they run; it appends them to the attempt's log
files (the same files the local executor writes) and answers each chunk with
the signal the control plane wants delivered, so log shipping doubles as the
control channel. ``run_shard`` is the Ray task: it runs the shard through the
shared runner on whatever node Ray picked.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..._errors import ExecutorError
from .base import LaunchRequest, Signal
from .runner import host_env, run_streaming

_RANK: dict[str | None, int] = {None: 0, "term": 1, "kill": 2}


class LogHub:
    """Appends shipped chunks to log files; hands out pending signals; remembers nodes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._signals: dict[str, Signal] = {}
        self._nodes: dict[str, str] = {}

    def push(
        self, handle: str, node_id: str, paths: tuple[str, str], out: bytes, err: bytes
    ) -> Signal | None:
        for path, data in zip(paths, (out, err), strict=True):
            if data:
                with open(path, "ab") as fh:
                    fh.write(data)
        with self._lock:
            self._nodes[handle] = node_id
            return self._signals.get(handle)

    def signal(self, handle: str, sig: Signal) -> None:
        with self._lock:
            if _RANK[sig] > _RANK[self._signals.get(handle)]:
                self._signals[handle] = sig

    def forget(self, handle: str) -> str | None:
        """Drop the attempt's state; returns the node it last reported from."""
        with self._lock:
            self._signals.pop(handle, None)
            return self._nodes.pop(handle, None)

    def forget_many(self, handles: list[str]) -> None:
        for handle in handles:
            self.forget(handle)

    def ping(self) -> bool:
        return True


_hubs: dict[str, Any] = {}  # per worker process: hub name -> actor handle


def run_shard(
    request: LaunchRequest, handle: str, hub_name: str, make_workdir: bool
) -> tuple[int, str | None]:
    """Ray task body: run one attempt on this node, shipping logs to the named hub.

    Returns (raw return code, reason). A shard that cannot start is exit 127 with a
    ``LaunchError`` reason and the cause in its stderr, as on the local executor.
    """
    import ray

    node = ray.get_runtime_context().get_node_id()
    hub = _hubs.get(hub_name)
    if hub is None:
        hub = _hubs[hub_name] = ray.get_actor(hub_name)
    paths = (str(request.stdout_path), str(request.stderr_path))

    def ship(out: bytes, err: bytes) -> Signal | None:
        result: Signal | None = ray.get(hub.push.remote(handle, node, paths, out, err))
        return result

    if make_workdir:
        request.working_dir.mkdir(parents=True, exist_ok=True)
    base = host_env(os.environ, drop=("SYLPHX_", "RAY_"))
    try:
        return run_streaming(request, base, ship), None
    except (OSError, ExecutorError) as exc:  # e.g. command not found, no bwrap
        ship(b"", f"sylphx: could not start the shard: {exc}\n".encode())
        return 127, f"LaunchError: {exc}"
