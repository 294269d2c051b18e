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
* An attempt is ``running`` from the moment its process started on a node (the task
  tells the hub; :meth:`RayExecutor.starts`), never while it waits in Ray's queue or
  for a node; its billed window is the one the node measured.
* An attempt whose node died ends with ``Exit.lost`` (reason ``NodeLost``); the node view
  (capacity) is read again at once, so nothing is relaunched into a node that is gone.
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
from sylphx._server.images.policy import refuse as images_refused

from .gang import Gang, result_exit, tier_resources
from .hub import LogHub
from .nodes import NodeView
from .remote import NodeEnvelope, node_tools, run_shard

GANG_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
_GC_SECONDS = 5.0  # a gang reservation nobody asked for this long is released
_NODE_ID = re.compile(r"node ID: ([0-9a-f]+)")


def _now() -> datetime:
    return datetime.now(UTC)


class RayExecutor:
    """Runs attempts as Ray tasks; one instance per control plane (one Ray driver)."""

    name = "ray"
    reports_starts = True  # attempts start when Ray places them: see starts()

    def __init__(
        self,
        address: str | None,
        *,
        gang_strategy: str = "SPREAD",
        sandbox: bool = True,
        enforce_tiers: bool = True,
        max_log_bytes: int = 1 << 30,
        policy: Policy | None = None,
        image_cache: str = "/var/cache/sylphx/images",
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
            sandbox,
            enforce_tiers,
            policy or Policy(),
            max_log_bytes=max_log_bytes,
            image_cache=image_cache,
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
        self._tools: Any = ray.remote(node_tools)
        self._plain: dict[str, Any] = {}  # machine -> task options (building them is not free)
        self._forget: list[str] = []
        self._lock = threading.Lock()
        self._refs: dict[str, Any] = {}  # handle -> ObjectRef of its task
        self._queued: dict[str, tuple[Any, LaunchRequest]] = {}  # launched, not yet flushed
        self._failed: list[Exit] = []  # submissions Ray refused, for the next poll
        self._noticed: set[str] = set()
        self._starts: dict[str, datetime] = {}  # handle -> its process's start, not yet taken
        self._gangs: dict[str, Gang] = {}
        self._gang_of: dict[str, str] = {}  # handle -> run id of its placement group
        self._nodes = NodeView()
        self._wake: Waker = lambda: None
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sylphx-ray-exits", daemon=True)
        self._watcher.start()

    # -- capacity and gangs --------------------------------------------------------
    def capacity(self) -> Resources:
        return self._nodes.total

    def reserve_gang(self, run_id: str, n: int, machine: str) -> bool:
        """One placement group of ``n`` bundles of the tier; True once Ray placed it.
        A tier no node can hold is not reserved: launch() then refuses it with the numbers."""
        try:
            self._nodes.check_fits_a_node(machine)
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

    def check_images(self) -> None:
        """Every alive node must be able to unpack and sandbox an image (bwrap, skopeo,
        umoci), and the sandbox must be on: any node may be given a shard."""
        if not self._envelope.sandbox:
            raise images_refused(
                "container images need the sandbox, and SYLPHX_SANDBOX is off on this server",
                "run without an image, or ask the operator to turn the sandbox on",
            )
        lacking = self._nodes.lacking_image_tools(self._tools)
        if lacking:
            raise images_refused(
                f"Ray node(s) {', '.join(lacking)} lack what images need (bubblewrap, skopeo,"
                " umoci)",
                "run without an image, or ask the operator to install them on every node"
                " (make system-deps)",
            )

    def launch(self, request: LaunchRequest) -> str:
        self._nodes.check_fits_a_node(request.machine)
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

    def starts(self) -> list[tuple[str, datetime]]:
        """Attempts whose process started since the last call, with when (each once)."""
        with self._lock:
            starts, self._starts = self._starts, {}
        return list(starts.items())

    def _take_starts(self) -> None:
        """Collect the starts the hub heard of; wake the reconciler for new ones."""
        try:
            starts = ray.get(self._hub.take_starts.remote(), timeout=5)
        except Exception:  # ray shutting down, or the hub busy: next time
            return
        if starts:
            with self._lock:
                for handle, epoch in starts.items():
                    if handle in self._refs:
                        self._starts[handle] = datetime.fromtimestamp(epoch, UTC)
            self._wake()

    def _watch(self) -> None:
        """Wake the reconciler as soon as any attempt's task starts or finishes."""
        while not self._closed.is_set():
            with self._lock:
                waiting = {ref: h for h, ref in self._refs.items() if h not in self._noticed}
            if not waiting:
                self._closed.wait(0.05)
                continue
            self._take_starts()
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
            node, seen = ray.get(self._hub.forget.remote(handle))
            node = match.group(1) if match else node
            nodes = ray.nodes()  # type: ignore[no-untyped-call]
            alive = {n["NodeID"] for n in nodes if n.get("Alive")}
            if isinstance(exc, NodeDiedError) or (node is not None and node not in alive):
                self._nodes.refresh()  # a node event: capacity without it, before any relaunch
                why = f"NodeLost: node {(node or '?')[:12]} died (preempted; retried elsewhere)"
                # billed until it was last heard from, not until Ray noticed the node gone
                end = datetime.fromtimestamp(seen, UTC) if seen is not None else now
                return Exit(handle, -9, end, reason=why, lost=True)
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
        self._nodes.close()
        with self._lock:
            for run_id in list(self._gangs):
                self._release(run_id)
        ray.kill(self._hub)
