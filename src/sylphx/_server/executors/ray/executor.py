"""Ray executor: shard attempts run as real processes on the nodes of a Ray cluster.

* Capacity is the cluster's CPU and memory (``ray.cluster_resources()``), so it
  follows nodes joining and leaving.
* Each attempt runs in a Ray task (no retries: the reconciler owns retries) asking
  for its tier's CPU and memory; on whatever node Ray picked, the task runs the
  command in the same envelope as the local executor (``remote.py``). A plain attempt
  (no gang, no image) runs in a *slot*, a task of its tier that runs one attempt after
  another (``slots.py``: no task per shard); a gang member or an image its own task.
* The control plane does not own those tasks: its home's hub does (``hub.py``), a
  detached actor on the control plane's node that submits them, relays their logs and
  signals, and keeps their outcomes until they are recorded. So attempts outlive the
  control plane: after a ``kill -9`` or a restart, the new control plane on the same home
  finds the hub by name (the home's id, kept in ``SYLPHX_HOME/ray.id``) and :meth:`adopt`
  re-adopts them, those that ended meanwhile with their true start and end
  (``attempts.py``).
* Gang runs reserve one detached placement group of N bundles first
  (:meth:`reserve_gang`, through the hub) and their shards go into its bundles, so all
  start together or none do.
* An attempt is ``running`` from the moment its process started on a node (the task
  tells the hub with its first log chunk, 0.1 s in, or with its result if it ended
  sooner; :meth:`RayExecutor.starts`), never while it waits in Ray's queue or for a
  node; its billed window is the one the node measured.
* Attempts are handed to the hub after their pass committed, without waiting for its
  answer (:meth:`flush`): the next pass settles what ended meanwhile.
* An attempt whose node died ends with ``Exit.lost`` (reason ``NodeLost``), and so does a
  gang member not yet started whose bundle was on it (Ray would re-place it late); the node view
  (capacity) is read again at once, so nothing is relaunched into a node that is gone.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Collection
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sylphx._core.errors import ExecutorError
from sylphx._core.machines import Resources
from sylphx._server.executors.base import Exit, LaunchRequest, Signal, Waker
from sylphx._server.executors.envelope.sandbox import Policy
from sylphx._server.images.layers import MAX_UNPACKED_BYTES
from sylphx._server.images.policy import refuse as images_refused

from .attempts import Ledger, outcome_exit
from .gang import Gangs
from .hub import LogHub, home_id, hub_name
from .nodes import NodeView
from .outcome import Launch
from .remote import NodeEnvelope, node_tools

GANG_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
_FEED_WAIT = 0.5  # seconds the hub holds a long poll of its feed
# the hub's threads for its idle slots (LogHub.take), each waiting up to slots.LINGER for
# an attempt: the most shards one run has. More idle slots than that wait for a thread
SLOT_THREADS = 256


def _now() -> datetime:
    return datetime.now(UTC)


def _connect(address: str | None) -> None:
    """Become a driver of the cluster. ``ray.init`` replaces the process's SIGTERM handler
    with one that exits at once (code 15): the server's own is put back, so SIGTERM still
    drains and stops the control plane (and exits 0)."""
    main = threading.current_thread() is threading.main_thread()
    on_term = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address or "auto", namespace="sylphx", log_to_driver=False)
    except Exception as exc:
        raise ExecutorError(
            f"could not connect to the Ray cluster at {address or 'auto'}: {exc}."
            " Fix: start one (`ray start --head`) and set SYLPHX_RAY_ADDRESS to it."
        ) from exc
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


class RayExecutor:
    """Runs attempts as Ray tasks owned by the home's hub; one instance per control plane
    (one Ray driver)."""

    name = "ray"
    reports_starts = True  # attempts start when Ray places them: see starts()
    batches_exits = True  # the hub's feed, read a long poll at a time (see _watch)

    def __init__(
        self,
        address: str | None,
        *,
        home: Path | None = None,
        gang_strategy: str = "SPREAD",
        sandbox: bool = True,
        enforce_tiers: bool = True,
        max_log_bytes: int = 1 << 30,
        policy: Policy | None = None,
        image_cache: str = "/var/cache/sylphx/images",
        private_registries: tuple[str, ...] = (),
        image_max_unpacked: int = MAX_UNPACKED_BYTES,
    ) -> None:
        if gang_strategy not in GANG_STRATEGIES:
            raise ExecutorError(
                f"gang strategy {gang_strategy!r} is not a placement group strategy."
                f" Fix: set SYLPHX_RAY_GANG_STRATEGY to one of {', '.join(GANG_STRATEGIES)}."
            )
        if not ray.is_initialized():
            _connect(address)
        self._envelope = NodeEnvelope(
            sandbox,
            enforce_tiers,
            policy or Policy(),
            max_log_bytes=max_log_bytes,
            image_cache=image_cache,
            private_registries=private_registries,
            image_max_unpacked=image_max_unpacked,
        )
        self._hub_name = hub_name(home_id(home))  # shards look it up by name
        self._hub, self._hub_is_new = self._connect_hub()
        self._tools: Any = ray.remote(node_tools)
        self._lock = threading.Lock()
        self._ledger = Ledger()
        self._queued: dict[str, Launch] = {}  # launched, not yet flushed
        self._handing: dict[str, None] = {}  # flushed, the hub's answer not yet come
        self._deferred: dict[str, list[Signal]] = {}  # signals for those, sent after it
        self._gangs = Gangs(self._hub, gang_strategy)
        self._retained = False  # whether the hub dropped what nobody adopted (first poll)
        self._nodes = NodeView(on_leave=self._nodes_left)
        self._wake: Waker = lambda: None
        self._closed = threading.Event()
        self._since = 0  # the hub's feed, read up to here
        self._read_hub()
        self._watcher = threading.Thread(target=self._watch, name="sylphx-ray-exits", daemon=True)
        self._watcher.start()

    def _connect_hub(self) -> tuple[Any, bool]:
        """The home's hub (made here, on this node, if it is not running): and whether it
        is new, i.e. knows nothing a previous control plane handed it."""
        here = ray.get_runtime_context().get_node_id()
        groups = {"slots": SLOT_THREADS}  # Ray's stubs lack the argument
        hub_actor: Any = ray.remote(concurrency_groups=groups)(LogHub)  # type: ignore[call-overload]
        hub = hub_actor.options(
            name=self._hub_name,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=64,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote()
        return hub, bool(ray.get(hub.hello.remote()))

    def _read_hub(self) -> None:
        """What the hub holds (after a restart: what the previous control plane handed
        it), before anything is adopted: every attempt's record, and the gangs."""
        self._since, changes = ray.get(self._hub.changes.remote(0, 0))
        self._ledger.note(changes)
        self._gangs.load(ray.get(self._hub.gangs.remote()))

    def _nodes_left(self, dead: list[str]) -> None:
        """A node event: the hub ends as lost the gang members that had not started on
        those nodes (see ``LogHub.nodes_left``); the feed then reports them."""
        with contextlib.suppress(Exception):  # the hub gone: its tasks are lost anyway
            self._hub.nodes_left.remote(dead)

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
        return self._gangs.reserve(run_id, n, machine)

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
        handle = f"ray:{request.run_id}:{request.index}:{request.attempt}"
        with self._lock:
            if handle in self._queued or self._ledger.handed_over(handle):  # idempotent
                return handle
            # a merge step (index -1) runs after its gang, never in one of its bundles
            bundle = self._gangs.bundle(handle, request.run_id) if request.index >= 0 else None
            self._queued[handle] = (handle, request, bundle)  # submitted at flush
        return handle

    def flush(self, *, discard: bool = False) -> None:
        """Hand the attempts launched since the last flush (their pass committed) to the
        hub, which submits them, or with ``discard`` drop them (it was rolled back). One
        Ray refuses is reported by the next poll as never started (exit 127, LaunchError).

        The hand-off is not waited for: the hub submits a wave of tasks in 0.1-0.5 s on a
        busy 2-core host, and a pass that waited for it held back the settling of the
        exits that came meanwhile, and so the next wave (P6). A signal for an attempt
        still being handed over is sent once the hub has it (see :meth:`signal`)."""
        self._ledger.starts_settled(committed=not discard)
        with self._lock:
            queued, self._queued = self._queued, {}
            if not discard:
                self._handing.update(dict.fromkeys(queued))
        if discard:
            self._gangs.unqueue(list(queued))
            return
        if not queued:
            return
        self._ledger.handing(queued)
        try:
            ref = self._hub.submit.remote(list(queued.values()), self._hub_name, self._envelope)
            ref.future().add_done_callback(functools.partial(self._handed, list(queued)))
        except Exception as exc:  # the hub is gone or broken: none of them was submitted
            self._handed(list(queued), None, exc)

    def _handed(
        self, handles: list[str], submitted: Future[Any] | None, error: Exception | None = None
    ) -> None:
        """The hub answered a hand-off (in a Ray thread): the attempts Ray refused are
        reported as never started; the signals asked meanwhile go out now."""
        try:
            refused: dict[str, str] = submitted.result() if submitted is not None else {}
        except Exception as exc:
            error = exc
        if error is not None:
            refused = {handle: f"the Ray cluster refused it: {error}" for handle in handles}
        with self._lock:
            for handle in handles:
                self._handing.pop(handle, None)
            deferred = [(h, self._deferred.pop(h)) for h in handles if h in self._deferred]
        for handle, sigs in deferred:
            if handle not in refused:
                for sig in sigs:
                    self._hub.signal.remote(handle, sig)
        if refused:
            now = _now()
            self._ledger.refused([Exit.unlaunched(h, now, why) for h, why in refused.items()])
            for handle in refused:
                self._gangs.ended(handle)
            self._wake()

    def drop(self, handles: Collection[str]) -> None:
        """Forget launches not yet submitted (their rows were rolled back)."""
        with self._lock:
            gone = [h for h in self._queued if h in handles]
            for handle in gone:
                del self._queued[handle]
        self._gangs.unqueue(gone)

    def adopt(self, handle: str) -> bool:
        """After a restart (or a failed pass): watch an attempt the hub holds, whether it
        still runs or ended meanwhile; one the hub never got is adopted to be launched
        again (:meth:`started` is False) -- unless the hub is new: the old one died, and
        the attempt with it (False: it is recorded lost)."""
        with self._lock:
            if handle in self._queued:
                return True
        adopted, run_id = self._ledger.adopt(handle, self._hub_is_new)
        if run_id is not None:
            self._gangs.adopted(handle, run_id)
        return adopted

    def started(self, handle: str) -> bool:
        """Whether the attempt was handed to the hub (or its exit is known)."""
        return self._ledger.handed_over(handle)

    def starts(self) -> list[tuple[str, datetime]]:
        """Attempts whose process started since the last call, with when (each once)."""
        return self._ledger.take_starts()

    def _watch(self) -> None:
        """Read the hub's feed (a long poll); wake the reconciler as soon as an attempt
        this control plane watches starts or ends."""
        while not self._closed.is_set():
            try:
                feed = self._hub.changes.remote(self._since, _FEED_WAIT)
                self._since, changes = ray.get(feed, timeout=30)
            except RayActorError:
                self._hub_died()
                continue
            except Exception:  # ray shutting down, or the hub busy: next time
                self._closed.wait(0.2)
                continue
            if self._ledger.note(changes):
                self._wake()

    def _hub_died(self) -> None:
        """The hub is gone (its node died, or it was killed), and its tasks with it: every
        attempt this control plane watches is lost; a new hub takes its place."""
        if self._closed.is_set():
            return
        why = "Lost: the Ray log hub that owned the attempt died"
        for handle in self._ledger.lose(why, _now()):
            self._gangs.ended(handle)
        self._wake()
        with contextlib.suppress(Exception):
            self._hub, _ = self._connect_hub()
            self._gangs.hub, self._hub_is_new, self._since = self._hub, True, 0
        self._closed.wait(0.5)

    def poll(self) -> list[Exit]:
        ack, ended, exits = self._ledger.take()
        for handle, outcome in ended:
            exits.append(outcome_exit(handle, outcome, self._nodes.refresh))
            self._gangs.ended(handle)
        self._ledger.now_reported(exits)
        if ack:  # their pass committed: nothing will ask for them again
            self._hub.forget_many.remote(ack)
        if not self._retained:
            self._retain()
        self._gangs.collect()
        return exits

    def _retain(self) -> None:
        """At the first poll (every live attempt was adopted before it): the hub drops the
        records nobody adopted -- their exits were recorded before a restart -- and the
        gangs none of whose attempts is live are released."""
        with self._lock:
            keep = self._ledger.watched() | set(self._queued)
        try:
            ray.get(self._hub.retain.remote(list(keep)), timeout=30)
        except Exception:  # next poll
            return
        self._ledger.keep_only(keep)
        self._retained = True
        self._gangs.collect(idle=True)

    def signal(self, handle: str, sig: Signal) -> None:
        """Delivered with the reply to the shard's next log chunk (within ~0.2 s); a kill
        also cancels a task Ray has not started yet. For an attempt whose hand-off the hub
        has not answered yet, sent once it has (the hub's calls run on many threads: sent
        now, it could overtake the hand-off and find nothing to stop)."""
        with self._lock:
            if handle in self._handing:
                self._deferred.setdefault(handle, []).append(sig)
                return
        self._hub.signal.remote(handle, sig)

    def alive(self, handle: str) -> bool:
        return self._ledger.is_live(handle)

    def close(self) -> None:
        """Stop watching. Running attempts, their hub and their gangs are left alone: a
        restarted control plane re-adopts them. Reservations no attempt uses are released,
        and the hub is stopped if it then holds nothing."""
        self._closed.set()
        self._watcher.join(timeout=2)
        self._nodes.close()
        if not self._retained:  # it never reconciled (a standby): nothing here is its own
            return
        self._gangs.collect(unused=True)
        with contextlib.suppress(Exception):  # ray shutting down
            if not self._ledger.watched() and ray.get(self._hub.idle.remote(), timeout=5):
                ray.kill(self._hub)
