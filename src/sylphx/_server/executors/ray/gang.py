"""The Ray executor's small parts: a tier as Ray resources, the Exit of a finished task,
and the gangs' placement groups (reserved through the hub, detached: they outlive the
control plane, and a restarted one takes them over from the hub)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ray
from ray.util import placement_group_table

from sylphx._core.machines import MACHINES
from sylphx._server.executors.base import Exit

GC_SECONDS = 5.0  # a gang reservation nobody asked for this long is released


def tier_resources(machine: str) -> dict[str, float]:
    """A tier as Ray resources: CPU (fractional) and memory in bytes."""
    tier = MACHINES[machine]
    return {"CPU": tier.vcpu, "memory": float(tier.memory_bytes)}


@dataclass
class Gang:
    pg: Any
    size: int
    machine: str
    ready_ref: Any
    asked: float
    ready: bool = False
    next_bundle: int = 0
    live: int = 0


class Gangs:
    """The gang runs' placement groups this control plane uses: each one's bundles given
    out and its live attempts; a group is released once every bundle was given out and
    every attempt in it ended, or when nobody asked for it for ``GC_SECONDS``."""

    def __init__(self, hub: Any, strategy: str) -> None:
        self.hub = hub  # the home's hub (replaced if it dies)
        self._strategy = strategy
        self._lock = threading.Lock()
        self._gangs: dict[str, Gang] = {}
        self._of: dict[str, str] = {}  # handle -> run id of its placement group

    def load(self, gangs: dict[str, tuple[Any, int, str, int]]) -> None:
        """Take over the gangs the hub holds (after a restart), ready if Ray says so soon."""
        for run_id, (pg, size, machine, launched) in gangs.items():
            self._gangs[run_id] = Gang(
                pg, size, machine, pg.ready(), time.monotonic(), next_bundle=launched
            )
        refs = [gang.ready_ref for gang in self._gangs.values()]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=5)[0]) if refs else set()
        for gang in self._gangs.values():
            gang.ready = gang.ready_ref in ready

    def reserve(self, run_id: str, n: int, machine: str) -> bool:
        """One placement group of ``n`` bundles of the tier; True once Ray placed it."""
        with self._lock:
            gang = self._gangs.get(run_id)
            stale = gang is not None and (gang.size, gang.machine) != (n, machine) and not gang.live
        if gang is None or stale:  # the hub replaces a stale one
            pg = ray.get(self.hub.reserve.remote(run_id, n, machine, self._strategy))
            gang = Gang(pg, n, machine, pg.ready(), time.monotonic())
            with self._lock:
                self._gangs[run_id] = gang
        gang.asked = time.monotonic()
        if not gang.ready:
            gang.ready = bool(ray.wait([gang.ready_ref], timeout=0)[0])
        return gang.ready

    def bundle(self, handle: str, run_id: str) -> int | None:
        """The bundle a launch of the run goes into (None: it is no gang's, or its gang
        is not placed or has none left)."""
        with self._lock:
            gang = self._gangs.get(run_id)
            if gang is None or not gang.ready or gang.next_bundle >= gang.size:
                return None
            gang.next_bundle += 1
            gang.live += 1
            self._of[handle] = run_id
            return gang.next_bundle - 1

    def unqueue(self, handles: list[str]) -> None:
        """Give back the bundles of launches that were never submitted."""
        with self._lock:
            for handle in handles:
                gang = self._gangs.get(self._of.pop(handle, ""))
                if gang is not None:
                    gang.next_bundle -= 1
                    gang.live -= 1

    def adopted(self, handle: str, run_id: str) -> None:
        """An attempt in the run's placement group was adopted: live again."""
        with self._lock:
            gang = self._gangs.get(run_id)
            if gang is not None and handle not in self._of:
                gang.live += 1
                self._of[handle] = run_id

    def ended(self, handle: str) -> None:
        with self._lock:
            run_id = self._of.pop(handle, None)
            gang = self._gangs.get(run_id) if run_id else None
            if run_id is None or gang is None:
                return
            gang.live -= 1
            if gang.live > 0 or gang.next_bundle < gang.size:
                return
            del self._gangs[run_id]
        self._release([run_id])

    def collect(self, *, idle: bool = False, unused: bool = False) -> None:
        """Release the reservations the reconciler stopped asking for (cancelled while
        queued); with ``idle`` also the groups every attempt of which ended (after a
        restart: those ended while no control plane watched), with ``unused`` every group
        no live attempt is in."""
        now = time.monotonic()
        with self._lock:
            stale = [
                run_id
                for run_id, g in self._gangs.items()
                if (g.next_bundle == 0 and now - g.asked > GC_SECONDS)
                or (g.live <= 0 and (unused or (idle and g.next_bundle > 0)))
            ]
            for run_id in stale:
                del self._gangs[run_id]
        self._release(stale)

    def _release(self, run_ids: list[str]) -> None:
        """Remove the groups (a hub round trip: never under the lock)."""
        for run_id in run_ids:
            with contextlib.suppress(Exception):  # the hub gone: so are its groups' owner
                ray.get(self.hub.release.remote(run_id), timeout=30)


def bundle_nodes(pg: Any) -> dict[int, str]:
    """Where Ray placed a ready placement group's bundles (empty: it could not say)."""
    try:
        table = placement_group_table(pg)
        return {int(i): str(node) for i, node in table["bundles_to_node_id"].items()}
    except Exception:
        return {}


def placement_state(pg: Any) -> str | None:
    """A placement group's state in Ray's table (None: it could not say)."""
    try:
        return str(placement_group_table(pg)["state"])
    except Exception:
        return None


def cancel(ref: Any) -> None:
    """Stop a task (one not started ends at once; a running one is interrupted and its
    process group killed on the way out)."""
    if ref is not None:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)


def result_exit(handle: str, result: Any, now: datetime) -> Exit:
    """The Exit of a finished ``run_shard``: (code, reason, streams that hit the log cap,
    when the process started and when the task ended, epoch seconds, on the node)."""
    code, reason, cut, started, ended = result
    return Exit.recorded(
        handle,
        int(code),
        _utc(ended) if ended is not None else now,
        reason,
        started_at=_utc(started) if started is not None else None,
        log_truncated=tuple(cut),
    )


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
