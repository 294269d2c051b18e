"""The Ray executor's view of the cluster: its alive nodes and their resources.

Read every ``REFRESH_SECONDS`` in a thread of its own (``ray.nodes()`` is a GCS round trip
that took up to 0.4 s on a loaded 2-core host: not on the reconciler's path), and at once
on a node event (an attempt lost with its node), so capacity never counts a node that is
gone and nothing is relaunched into it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sylphx._core.errors import ExecutorError
from sylphx._core.machines import Resources

REFRESH_SECONDS = 0.5
PROBE_SECONDS = 30.0  # a node asked what it has must answer within this


class NodeView:
    """The alive nodes' resources, kept fresh until :meth:`close`; ``on_leave`` is told
    the ids of nodes that were alive at the previous read and are not any more."""

    def __init__(self, on_leave: Callable[[list[str]], None] = lambda dead: None) -> None:
        self._on_leave = on_leave
        self._lock = threading.Lock()
        self._nodes: list[Resources] = []
        self._ids: list[str] = []  # the alive nodes' ids
        self._image_ready: set[str] = set()  # nodes found to have what images need
        self.total = Resources(0, 0)  # every alive node's CPU and memory together
        self.refresh()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._watch, name="sylphx-ray-nodes", daemon=True)
        self._reader.start()

    def refresh(self) -> None:
        """Read the cluster's alive nodes now: joins and leaves show in capacity."""
        alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        nodes = [
            Resources.of_host(n["Resources"].get("CPU", 0.0), int(n["Resources"].get("memory", 0)))
            for n in alive
        ]
        with self._lock:
            dead = sorted(set(self._ids) - {n["NodeID"] for n in alive})
            self._ids = [n["NodeID"] for n in alive]
            self._nodes, self.total = nodes, sum(nodes, Resources(0, 0))
        if dead:
            self._on_leave(dead)

    def lacking_image_tools(self, probe: Any) -> list[str]:
        """The alive nodes (short ids) that lack what container images need, asking each
        node not yet known to have it with ``probe`` (a remote ``node_tools``) pinned to it."""
        unknown = [node for node in self._ids if node not in self._image_ready]
        refs = {
            node: probe.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote()
            for node in unknown
        }
        lacking = []
        for node, ref in refs.items():
            try:
                tools = ray.get(ref, timeout=PROBE_SECONDS)
            except Exception:  # a node that cannot answer cannot be trusted with an image
                tools = {}
            if tools and all(tools.values()):
                self._image_ready.add(node)
            else:
                lacking.append(node[:12])
        return lacking

    def _watch(self) -> None:
        while not self._closed.wait(REFRESH_SECONDS):
            try:
                self.refresh()
            except Exception:  # ray shutting down, or the GCS briefly away: keep the last view
                continue

    def check_fits_a_node(self, machine: str) -> None:
        """Refuse a tier no alive node can hold: Ray would leave its task pending forever."""
        nodes = self._nodes
        unit = Resources.of_tier(machine)
        if any(unit.fits_in(node) for node in nodes):
            return
        largest = max(nodes, key=lambda r: (r.millicpu, r.memory), default=Resources(0, 0))
        raise ExecutorError(
            f"one {machine} shard needs {unit.text()}, but the largest Ray node has"
            f" {largest.text()}, so Ray could never place it. Fix: pick a smaller machine"
            " tier, or add larger nodes to the cluster."
        )

    def close(self) -> None:
        """Stop reading."""
        self._closed.set()
        self._reader.join(timeout=2)
