"""Ray executor: shard attempts run as real processes on the nodes of a Ray cluster.

* Capacity is the cluster's CPU and memory (``ray.cluster_resources()``), so it
  follows nodes joining and leaving.
* Each attempt is one Ray task (no retries: the reconciler owns retries) asking
  for its tier's CPU and memory; on whatever node Ray picked, the task runs the
  command in the same envelope as the local executor (``ray_remote.py``).
* Gang runs reserve one placement group of N bundles first (:meth:`reserve_gang`)
  and their shards go into its bundles, so all start together or none do.
* Logs and signals travel through one ``LogHub`` actor on the control plane's
  node (see ``ray_remote.py``); nothing relies on a shared filesystem for logs.
* An attempt whose node died ends with ``Exit.lost`` (reason ``NodeLost``).
* Attempts belong to this driver: after a control plane restart Ray has ended
  them, so :meth:`adopt` declines and the reconciler records them as lost.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import NodeDiedError, RayError, RayTaskError, TaskCancelledError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from sylphx._core.errors import ExecutorError
from sylphx._core.machines import MACHINES, Resources
from sylphx._server.executors.base import Exit, LaunchRequest, Signal, Waker
from sylphx._server.executors.envelope.sandbox import Policy

from .gang import Gang, result_exit, tier_resources
from .remote import LogHub, NodeEnvelope, run_shard

GANG_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
_GC_SECONDS = 5.0  # a gang reservation nobody asked for this long is released
_NODES_SECONDS = 0.5  # how often the view of the cluster's alive nodes is re-read
_NODE_ID = re.compile(r"node ID: ([0-9a-f]+)")


def _now() -> datetime:
    return datetime.now(UTC)


class RayExecutor:
    """Runs attempts as Ray tasks; one instance per control plane (one Ray driver)."""

    name = "ray"

    def __init__(
        self,
        address: str | None,
        *,
        gang_strategy: str = "SPREAD",
        sandbox: bool = True,
        enforce_tiers: bool = True,
        max_log_bytes: int = 1 << 30,
        policy: Policy | None = None,
    ) -> None:
        if gang_strategy not in GANG_STRATEGIES:
            raise ExecutorError(
                f"gang strategy {gang_strategy!r} is not a placement group strategy."
                f" Fix: set SYLPHX_RAY_GANG_STRATEGY to one of {', '.join(GANG_STRATEGIES)}."
            )
        if not ray.is_initialized():
            try:
                ray.init(address=address or "auto", namespace="sylphx", log_to_driver=False)
            except Exception as exc:
                raise ExecutorError(
                    f"could not connect to the Ray cluster at {address or 'auto'}: {exc}."
                    " Fix: start one (`ray start --head`) and set SYLPHX_RAY_ADDRESS to it."
                ) from exc
        self._strategy = gang_strategy
        self._envelope = NodeEnvelope(
            sandbox, enforce_tiers, policy or Policy(), max_log_bytes=max_log_bytes
        )
        here = ray.get_runtime_context().get_node_id()
        hub_actor: Any = ray.remote(LogHub)
        self._hub_name = f"sylphx-hub-{uuid.uuid4().hex[:12]}"  # shards look it up by name
        self._hub: Any = hub_actor.options(
            name=self._hub_name,
            num_cpus=0,
            max_concurrency=64,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote()
        ray.get(self._hub.ping.remote())
        self._task: Any = ray.remote(run_shard)
        self._plain: dict[str, Any] = {}  # machine -> task options (building them is not free)
        self._forget: list[str] = []
        self._lock = threading.Lock()
        self._refs: dict[str, Any] = {}  # handle -> ObjectRef of its task
        self._queued: dict[str, tuple[Any, LaunchRequest]] = {}  # launched, not yet flushed
        self._failed: list[Exit] = []  # submissions Ray refused, for the next poll
        self._noticed: set[str] = set()
        self._gangs: dict[str, Gang] = {}
        self._gang_of: dict[str, str] = {}  # handle -> run id of its placement group
        self._nodes: list[Resources] = []
        self._total = Resources(0, 0)
        self._read_nodes()
        self._wake: Waker = lambda: None
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sylphx-ray-exits", daemon=True)
        self._watcher.start()
        self._node_reader = threading.Thread(
            target=self._watch_nodes, name="sylphx-ray-nodes", daemon=True
        )
        self._node_reader.start()

    # -- capacity and gangs --------------------------------------------------------
    def _read_nodes(self) -> None:
        """Read the cluster's alive nodes: joins and leaves show in capacity and placement."""
        nodes = [
            Resources.of_host(n["Resources"].get("CPU", 0.0), int(n["Resources"].get("memory", 0)))
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive")
        ]
        self._nodes, self._total = nodes, sum(nodes, Resources(0, 0))

    def _watch_nodes(self) -> None:
        """Keep the node view fresh off the reconciler's path: ``ray.nodes()`` is a GCS round
        trip that took up to 0.4 s on a loaded 2-core host, inside the pass that launched."""
        while not self._closed.wait(_NODES_SECONDS):
            try:
                self._read_nodes()
            except Exception:  # ray shutting down, or the GCS briefly away: keep the last view
                continue

    def capacity(self) -> Resources:
        return self._total

    def _check_fits_a_node(self, machine: str) -> None:
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

    def reserve_gang(self, run_id: str, n: int, machine: str) -> bool:
        """One placement group of ``n`` bundles of the tier; True once Ray placed it.
        A tier no node can hold is not reserved: launch() then refuses it with the numbers."""
        try:
            self._check_fits_a_node(machine)
        except ExecutorError:
            return True
        with self._lock:
            gang = self._gangs.get(run_id)
            if gang is not None and (gang.size, gang.machine) != (n, machine) and not gang.live:
                self._release(run_id)
                gang = None
            if gang is None:
                pg = placement_group(
                    [tier_resources(machine)] * n, strategy=self._strategy, name=f"sylphx-{run_id}"
                )
                gang = Gang(pg, n, machine, pg.ready(), time.monotonic())
                self._gangs[run_id] = gang
            gang.asked = time.monotonic()
            if not gang.ready:
                gang.ready = bool(ray.wait([gang.ready_ref], timeout=0)[0])
            return gang.ready

    def _release(self, run_id: str) -> None:
        gang = self._gangs.pop(run_id, None)
        if gang is not None:
            remove_placement_group(gang.pg)

    # -- attempts --------------------------------------------------------------
    def forget_run(self, run_id: str) -> None:
        """Nothing to drop: a node keeps no state files for an ended attempt."""

    def set_waker(self, wake: Waker) -> None:
        self._wake = wake

    def launch(self, request: LaunchRequest) -> str:
        if request.image is not None:
            raise ExecutorError("the ray executor cannot run container images yet")
        self._check_fits_a_node(request.machine)
        stdout, stderr = Path(request.stdout_path), Path(request.stderr_path)
        stdout.parent.mkdir(parents=True, exist_ok=True)
        stdout.touch()
        stderr.touch()
        opts: dict[str, Any] = {
            "num_cpus": MACHINES[request.machine].vcpu,
            "memory": MACHINES[request.machine].memory_bytes,
            "max_retries": 0,
        }
        handle = f"ray:{request.run_id}:{request.index}:{request.attempt}"
        with self._lock:
            if handle in self._refs or handle in self._queued:  # idempotent per attempt
                return handle
            gang = self._gangs.get(request.run_id)
            if gang is not None and gang.ready and gang.next_bundle < gang.size:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    gang.pg, placement_group_bundle_index=gang.next_bundle
                )
                gang.next_bundle += 1
                gang.live += 1
                self._gang_of[handle] = request.run_id
                task = self._task.options(**opts)
            else:
                task = self._plain.get(request.machine)
                if task is None:
                    task = self._plain[request.machine] = self._task.options(**opts)
            self._queued[handle] = (task, request)  # submitted at flush: after the commit
        return handle

    def flush(self, *, discard: bool = False) -> None:
        """Submit the tasks launched since the last flush (their pass committed), or with
        ``discard`` drop them (it was rolled back). A task Ray refuses is reported by the
        next poll as never started (exit 127, LaunchError)."""
        with self._lock:
            queued, self._queued = self._queued, {}
        if discard:
            self._unqueue(list(queued))
            return
        failed = []
        for handle, (task, request) in queued.items():
            try:
                ref = task.remote(request, handle, self._hub_name, self._envelope)
            except Exception as exc:
                failed.append(Exit.unlaunched(handle, _now(), str(exc)))
                continue
            with self._lock:
                self._refs[handle] = ref
        if failed:
            for exit in failed:
                self._ended(exit.handle)
            with self._lock:
                self._failed += failed
            self._wake()

    def drop(self, handles: Collection[str]) -> None:
        """Forget launches not yet submitted (their rows were rolled back)."""
        with self._lock:
            gone = [h for h in self._queued if h in handles]
            for handle in gone:
                del self._queued[handle]
        self._unqueue(gone)

    def _unqueue(self, handles: list[str]) -> None:
        """Give back the gang bundles of launches that were never submitted."""
        with self._lock:
            for handle in handles:
                gang = self._gangs.get(self._gang_of.pop(handle, ""))
                if gang is not None:
                    gang.next_bundle -= 1
                    gang.live -= 1

    def adopt(self, handle: str) -> bool:
        """A previous control plane's Ray tasks ended with its driver: never adoptable."""
        with self._lock:
            return handle in self._refs or any(e.handle == handle for e in self._failed)

    def started(self, handle: str) -> bool:
        """Only this driver's attempts are adopted, and each was submitted (or failed to)."""
        return self.adopt(handle)

    def _watch(self) -> None:
        """Wake the reconciler as soon as any attempt's task finishes."""
        while not self._closed.is_set():
            with self._lock:
                waiting = {ref: h for h, ref in self._refs.items() if h not in self._noticed}
            if not waiting:
                self._closed.wait(0.05)
                continue
            try:
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=0.2, fetch_local=False)
            except Exception:  # ray shutting down
                self._closed.wait(0.2)
                continue
            if ready:
                with self._lock:
                    self._noticed.update(waiting[ref] for ref in ready)
                self._wake()

    def poll(self) -> list[Exit]:
        with self._lock:
            items = list(self._refs.items())
            exits, self._failed = self._failed, []
        if items:
            refs = [ref for _, ref in items]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
            done = set(ready)
            ended = [(handle, ref) for handle, ref in items if ref in done]
            try:  # one round trip for every result; a failed task is looked at on its own
                results = ray.get([ref for _, ref in ended])
            except Exception:  # any failure: each task is asked on its own, below
                results = None
            now = _now()
            for i, (handle, ref) in enumerate(ended):
                if results is None:
                    exits.append(self._exit(handle, ref))
                else:
                    exits.append(result_exit(handle, results[i], now))
                self._ended(handle)
        with self._lock:
            forget, self._forget = self._forget, []
        if forget:
            self._hub.forget_many.remote(forget)
        self._gc_gangs()
        return exits

    def _exit(self, handle: str, ref: Any) -> Exit:
        now = _now()
        try:
            return result_exit(handle, ray.get(ref), now)
        except TaskCancelledError:
            return Exit(handle, -9, now)
        except RayTaskError as exc:
            first = str(exc).strip().splitlines()[-1][:300]
            return Exit(handle, 1, now, reason=f"ExecutorError: {first}")
        except RayError as exc:
            match = _NODE_ID.search(str(exc))
            node: str | None = match.group(1) if match else ray.get(self._hub.forget.remote(handle))
            nodes = ray.nodes()  # type: ignore[no-untyped-call]
            alive = {n["NodeID"] for n in nodes if n.get("Alive")}
            if isinstance(exc, NodeDiedError) or (node is not None and node not in alive):
                why = f"NodeLost: node {(node or '?')[:12]} died (preempted; retried elsewhere)"
                return Exit(handle, -9, now, reason=why, lost=True)
            return Exit(handle, -9, now, reason=f"WorkerCrashed: {type(exc).__name__}")

    def _ended(self, handle: str) -> None:
        with self._lock:
            self._forget.append(handle)
            self._refs.pop(handle, None)
            self._noticed.discard(handle)
            run_id = self._gang_of.pop(handle, None)
            gang = self._gangs.get(run_id) if run_id else None
            if run_id and gang is not None:
                gang.live -= 1
                if gang.live <= 0 and gang.next_bundle >= gang.size:
                    self._release(run_id)

    def _gc_gangs(self) -> None:
        """Release reservations the reconciler stopped asking for (cancelled while queued)."""
        with self._lock:
            stale = [
                run_id
                for run_id, g in self._gangs.items()
                if g.next_bundle == 0 and time.monotonic() - g.asked > _GC_SECONDS
            ]
            for run_id in stale:
                self._release(run_id)

    def signal(self, handle: str, sig: Signal) -> None:
        """Delivered with the reply to the shard's next log chunk (within ~0.2 s); a kill
        also cancels a task Ray has not started yet."""
        self._hub.signal.remote(handle, sig)
        with self._lock:
            ref = self._refs.get(handle)
        if sig == "kill" and ref is not None:
            ray.cancel(ref, force=False)

    def alive(self, handle: str) -> bool:
        with self._lock:
            return handle in self._refs

    def close(self) -> None:
        """Stop watching and release reservations. Shards still running lose their log hub
        and stop themselves at their next chunk (nothing would record their output)."""
        self._closed.set()
        self._watcher.join(timeout=2)
        self._node_reader.join(timeout=2)
        with self._lock:
            for run_id in list(self._gangs):
                self._release(run_id)
        ray.kill(self._hub)
