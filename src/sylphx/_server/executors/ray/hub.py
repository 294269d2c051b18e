"""The hub: the home's agent in the Ray cluster, one detached actor per control-plane home.

Ray ends a driver's tasks when the driver goes, and the control plane is the driver. So
it never submits a shard attempt itself: it hands it to its home's ``LogHub``, a detached
actor (namespace ``sylphx``, named after the home: :func:`hub_name`) on the control
plane's node, which runs the attempt in one of its slots (:mod:`.slots`: Ray tasks that
run plain attempts one after another) or, for a gang member or an image, submits it as
a Ray task of its own, and so owns it; gangs' placement groups are detached too,
reserved through the hub. A ``kill -9`` or a restart of the control plane leaves the
hub, its tasks and their placement groups running; a new control plane on the same home
finds the hub by name and re-adopts them (see ``attempts.py``).

The hub keeps each attempt's record -- its gang, its node, when its process started, when
it last shipped output, and once its task ended, its outcome (what ``run_shard`` returned,
or how Ray failed it) -- until the control plane says it recorded the exit
(:meth:`LogHub.forget_many`), and tells the control plane of starts and outcomes as a feed
of changes (:meth:`LogHub.changes`, a long poll). Shards ship their output to it in chunks;
it appends them to the attempt's log files (on the control plane's disk: nothing relies
on a shared filesystem for logs) and answers each chunk with the signal the control plane
wants delivered.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from sylphx._server.executors.base import Signal

from .gang import bundle_nodes, cancel, placement_state, tier_resources
from .outcome import Change, Launch, Outcome, failure, task_options
from .remote import NodeEnvelope, run_shard
from .slots import Slots, by_slot

_RANK: dict[str | None, int] = {None: 0, "term": 1, "kill": 2}
HOME_ID_FILE = "ray.id"


def home_id(home: Path | None) -> str:
    """A stable id of the control plane's home, made once and kept in it: it names the
    home's hub, so a restart finds its own and two homes on one cluster never share one.
    Without a home, a new id (nothing survives this executor)."""
    if home is None:
        return uuid.uuid4().hex[:16]
    path = home / HOME_ID_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        new = uuid.uuid4().hex[:16]
        tmp = home / f".{HOME_ID_FILE}.{new}"
        tmp.write_text(new)
        try:
            os.link(tmp, path)  # the first writer's id wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def hub_name(home_id: str) -> str:
    """The hub's actor name for a home (see ``RayExecutor``: a stable id of the home)."""
    return f"sylphx-hub-{home_id}"


@dataclass
class _Attempt:
    gang: str | None  # run id of the placement group it runs in
    ref: Any = None  # its task, until it ended
    node: str | None = None  # the node it last reported from
    started: float | None = None  # when its process started (epoch)
    seen: float | None = None  # when it last shipped (every ~0.2 s while it runs)
    outcome: Outcome | None = None
    seq: int = 0  # the feed's position of its last change
    placed: str | None = None  # the node its gang's bundle was on when submitted


@dataclass
class _Gang:
    pg: Any
    size: int
    machine: str
    launched: int = 0  # bundles given to attempts so far (the next one's index)


class LogHub(Slots):
    """Submits and owns a home's attempts and gangs; relays their logs and signals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        self._attempts: dict[str, _Attempt] = {}
        self._signals: dict[str, list[Signal]] = {}  # not yet delivered, in order
        self._asked: dict[str, Signal] = {}  # the strongest signal asked for so far
        self._gangs: dict[str, _Gang] = {}
        self._greeted = False
        self._task: Any = ray.remote(run_shard)
        self._plain: dict[str, Any] = {}  # machine -> task options (building them is not free)
        self._init_slots()  # plain attempts run in slots (see .slots)

    def hello(self) -> bool:
        """True for the first control plane that calls it: the hub is new, nothing it was
        asked before can be known to it."""
        with self._lock:
            first, self._greeted = not self._greeted, True
            return first

    # -- attempts -------------------------------------------------------------
    def submit(self, launches: list[Launch], name: str, envelope: NodeEnvelope) -> dict[str, str]:
        """Queue each plain attempt for a slot (see :mod:`.slots`); submit each other one
        as a Ray task of its own (into its gang's bundle, if it has one). Both ship to
        the hub called ``name``. Returns those Ray refused, with why. An attempt already
        submitted is left alone: launches are idempotent."""
        refused = self._queue([launch for launch in launches if by_slot(launch)], name, envelope)
        launches = [launch for launch in launches if not by_slot(launch)]
        with self._lock:
            pgs = {
                r.run_id: self._gangs[r.run_id].pg
                for _, r, b in launches
                if b is not None and r.run_id in self._gangs
            }
        where = {run_id: bundle_nodes(pg) for run_id, pg in pgs.items()}  # before any loss
        for handle, request, bundle in launches:
            with self._lock:
                if handle in self._attempts:
                    continue
                gang = self._gangs.get(request.run_id) if bundle is not None else None
                attempt = _Attempt(gang=request.run_id if gang is not None else None)
                self._attempts[handle] = attempt
                if gang is not None and bundle is not None:
                    attempt.placed = where.get(request.run_id, {}).get(bundle) or None
                    gang.launched = max(gang.launched, bundle + 1)
            try:
                task = self._task_for(request.machine, gang, bundle)
                attempt.ref = task.remote(request, handle, name, envelope)
            except Exception as exc:
                with self._lock:
                    del self._attempts[handle]
                refused[handle] = str(exc)
                continue
            attempt.ref.future().add_done_callback(functools.partial(self._done, handle))
        return refused

    def _task_for(self, machine: str, gang: _Gang | None, bundle: int | None) -> Any:
        if gang is None:
            task = self._plain.get(machine)
            if task is None:
                task = self._plain[machine] = self._task.options(**task_options(machine))
            return task
        strategy = PlacementGroupSchedulingStrategy(
            gang.pg, placement_group_bundle_index=bundle or 0
        )
        return self._task.options(**task_options(machine), scheduling_strategy=strategy)

    def _done(self, handle: str, future: Future[Any]) -> None:
        """A task ended (in a Ray thread): keep its outcome until the control plane took it."""
        try:
            outcome: Outcome = ("result", time.time(), tuple(future.result()))
        except BaseException as exc:
            with self._lock:
                attempt = self._attempts.get(handle)
                node, seen = (attempt.node, attempt.seen) if attempt else (None, None)
            outcome = failure(exc, node, seen)
        self._finish(handle, outcome)

    def _new_attempt(self) -> _Attempt:
        return _Attempt(gang=None)

    def _finish(self, handle: str, outcome: Outcome) -> None:
        with self._changed:
            self._settle(handle, outcome)

    def _settle(self, handle: str, outcome: Outcome) -> None:  # under the lock
        attempt = self._attempts.get(handle)
        if attempt is None or attempt.outcome is not None:
            return
        attempt.outcome, attempt.ref = outcome, None
        self._bump(attempt)

    def _bump(self, attempt: _Attempt) -> None:  # under the lock
        self._seq += 1
        attempt.seq = self._seq
        self._changed.notify_all()

    def changes(self, since: int, timeout: float) -> tuple[int, list[Change]]:
        """The records that changed after position ``since`` of the feed (0: all of them),
        waiting up to ``timeout`` seconds for one; and the feed's position now."""
        self._start_slots()
        with self._changed:
            if self._seq <= since:
                self._changed.wait(timeout)
            changed = [
                (handle, a.gang, a.started, a.outcome)
                for handle, a in self._attempts.items()
                if a.seq > since
            ]
            return self._seq, changed

    def forget_many(self, handles: list[str]) -> None:
        """Drop the records of attempts whose exits the control plane recorded."""
        with self._lock:
            for handle in handles:
                self._attempts.pop(handle, None)
                self._signals.pop(handle, None)
                self._asked.pop(handle, None)

    def retain(self, keep: list[str]) -> list[str]:
        """Drop every record but ``keep``'s (after a restart: the attempts the store still
        shows as live); one still running is stopped, for nobody would record it: its
        own task cancelled, or, in a slot, killed at its next chunk (the slot may run
        another attempt by the time a cancel lands). Returns the handles dropped."""
        kept = set(keep)
        with self._lock:
            gone = [handle for handle in self._attempts if handle not in kept]
            self._doomed.update(h for h in gone if self._slots.running(h))  # killed at a push
            self._slots.discard(set(gone))  # queued ones never start
            refs = [self._attempts.pop(handle).ref for handle in gone]
            for handle in gone:
                self._signals.pop(handle, None)
                self._asked.pop(handle, None)
        for ref in refs:
            if ref is not None:
                ray.cancel(ref, force=True)
        return gone

    # -- from the shards ------------------------------------------------------
    def started(self, handle: str, node_id: str, epoch: float) -> None:
        """An attempt's process started on ``node_id``. A gang member that started on
        another node than its bundle's was re-placed by Ray after that node died, late,
        while its siblings ran without it: it is lost (and stopped), never adopted."""
        with self._changed:
            attempt = self._attempts.get(handle)
            if attempt is None or attempt.started is not None or attempt.outcome is not None:
                return
            placed = attempt.placed
            if placed is None or placed == node_id:
                attempt.node, attempt.started = node_id, epoch
                self._bump(attempt)
                return
            ref = self._lose(attempt, placed, "re-placed by Ray after its node died")
        cancel(ref)

    def push(
        self,
        handle: str,
        node_id: str,
        paths: tuple[str, str],
        out: bytes,
        err: bytes,
        started: float | None = None,
    ) -> Signal | None:
        """A chunk of an attempt's output (``started``: when its process started, with
        its first chunk); the reply is the signal to deliver, if any."""
        if started is not None:
            self.started(handle, node_id, started)
        for path, data in zip(paths, (out, err), strict=True):
            if data:
                with open(path, "ab") as fh:
                    fh.write(data)
        with self._lock:
            attempt = self._attempts.get(handle)
            if attempt is not None:
                attempt.node, attempt.seen = node_id, time.time()
            pending = self._signals.get(handle)
            sig = pending.pop(0) if pending else ("kill" if handle in self._doomed else None)
            ref = attempt.ref if attempt is not None and sig == "kill" else None
        if ref is not None:  # the term (if any) went out with an earlier reply
            ray.cancel(ref, force=False)
        return sig

    def signal(self, handle: str, sig: Signal) -> None:
        """Delivered with the reply to one of the shard's next chunks, each signal once and
        in the order asked: a kill asked while a term is not yet delivered goes out after
        it, never in its place (a signal no stronger than one asked before is dropped).
        A kill also cancels the task, so one Ray has not started yet ends at once --
        after its term went out, for one that started. An attempt the hub does not hold
        (it ended and was recorded) has nothing to stop."""
        with self._lock:
            attempt = self._attempts.get(handle)
            if attempt is None or _RANK[sig] <= _RANK[self._asked.get(handle)]:
                return
            if self._slots.drop(handle):  # still queued for a slot: it never starts
                self._settle(handle, ("cancelled", time.time()))
                return
            self._asked[handle] = sig
            pending = self._signals.setdefault(handle, [])
            pending.append(sig)
            term_first = attempt.started is not None and pending[0] == "term"
            ref = attempt.ref if sig == "kill" and not term_first else None
        if ref is not None:
            ray.cancel(ref, force=False)

    # -- node loss ---------------------------------------------------------------
    def nodes_left(self, dead: list[str]) -> list[str]:
        """Nodes left the cluster: every gang member whose process had not started and
        whose bundle was on one of them (or, where that is unknown, whose placement group
        Ray is rescheduling) is lost and its task cancelled, so the control plane stops
        its siblings and admits the gang again whole; Ray would otherwise re-place the
        bundle and start it late, alone. Returns the handles lost."""
        gone = set(dead)
        with self._lock:
            unknown = {
                a.gang: self._gangs[a.gang].pg
                for a in self._attempts.values()
                if a.gang in self._gangs and a.placed is None and a.started is None
            }
        moving = {run_id for run_id, pg in unknown.items() if placement_state(pg) == "RESCHEDULING"}
        refs = {}
        with self._changed:
            for handle, attempt in self._attempts.items():
                if attempt.gang is None or attempt.started is not None or attempt.outcome:
                    continue
                placed = attempt.placed
                if placed in gone or (placed is None and attempt.gang in moving):
                    refs[handle] = self._lose(attempt, placed, "died before it started")
        for ref in refs.values():
            cancel(ref)
        return list(refs)

    def _lose(self, attempt: _Attempt, node: str | None, what: str) -> Any:  # under the lock
        """End a gang member as lost with its bundle's node; returns its task to cancel."""
        text = f"NodeLost: the node ID: {node or '?'} of its gang bundle {what}"
        attempt.outcome = ("lost", time.time(), text, True, node, attempt.seen)
        ref, attempt.ref = attempt.ref, None
        self._bump(attempt)
        return ref

    # -- gangs -----------------------------------------------------------------
    def reserve(self, run_id: str, n: int, machine: str, strategy: str) -> Any:
        """A detached placement group of ``n`` bundles of the tier for a gang run (the one
        it has, if of that shape; another one replaces it)."""
        with self._lock:
            gang = self._gangs.get(run_id)
            if gang is not None and (gang.size, gang.machine) == (n, machine):
                return gang.pg
            old = self._gangs.pop(run_id, None)
        if old is not None:
            remove_placement_group(old.pg)
        pg = placement_group(
            [tier_resources(machine)] * n,
            strategy=strategy,
            name=f"sylphx-{run_id}",
            lifetime="detached",
        )
        with self._lock:
            self._gangs[run_id] = _Gang(pg, n, machine)
        return pg

    def release(self, run_id: str) -> None:
        """Remove a gang's placement group."""
        with self._lock:
            gang = self._gangs.pop(run_id, None)
        if gang is not None:
            remove_placement_group(gang.pg)

    def gangs(self) -> dict[str, tuple[Any, int, str, int]]:
        """Each gang's placement group, size, tier and bundles given out so far."""
        with self._lock:
            return {r: (g.pg, g.size, g.machine, g.launched) for r, g in self._gangs.items()}

    def idle(self) -> bool:
        """Whether the hub holds nothing: no attempt, no gang."""
        with self._lock:
            return not self._attempts and not self._gangs

    def ping(self) -> bool:
        return True
