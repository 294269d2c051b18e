"""Slots: Ray tasks in which the hub runs a home's plain attempts, one after another.

A Ray task per attempt costs the cluster, for every shard, a task submission from the
hub, a worker lease from a raylet, and the task's own bookkeeping in the worker, the
raylet and the GCS: on P6's trivial shards about a tenth of all the host CPU a shard
takes (BENCHMARKS.md, P6; ``docs/adr/0012-ray-slots.md``). So the hub runs plain
attempts (no gang, no image) in *slots*. A slot is a Ray task of one tier, asking for
exactly what an attempt's own task of that tier would (its CPU and memory; no retries),
that takes the next attempt of its tier queued at the hub (:meth:`LogHub.take`), runs
it with the same node body (:func:`.remote.run_shard`: the attempt is ``running`` from
its process's start, as ever), reports how it ended with its next take, and ends once
none came for ``LINGER`` seconds. An attempt waits in the hub's queue, not in Ray's:
one not yet taken is cancelled there at once; one a slot took is stopped through the
replies to its log chunks, never by cancelling the slot's task (by then the slot may
run another attempt). A slot lost with its worker or node loses the attempt it ran.

This module keeps the queue and the slots; the hub calls it under its own lock.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import ray

from sylphx._server.executors.base import LaunchRequest

from .outcome import Launch, Outcome, failure, task_options
from .remote import NodeEnvelope, run_slot

__all__ = ["LINGER", "Kind", "Slot", "SlotQueue", "Slots", "by_slot"]

LINGER = 2.0  # seconds an idle slot waits for its kind's next attempt before it ends

# What a slot runs: attempts of one tier, in one node envelope (the control plane's
# settings when they were submitted: a slot never runs an attempt under another's)
Kind = tuple[str, NodeEnvelope]


@dataclass
class Slot:
    """A slot task: its kind, its Ray task, the attempt it runs (None: between two)."""

    kind: Kind
    ref: Any = None
    current: str | None = None
    took: bool = False  # it asked for an attempt at least once (it is past its start)


class SlotQueue:
    """The plain attempts waiting for a slot, per kind, and the slots. Every method is
    called with ``lock`` (the hub's) held; :meth:`next` waits on it."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._queued: dict[Kind, deque[tuple[str, LaunchRequest]]] = {}
        self._idle: dict[Kind, list[threading.Condition]] = {}  # waiting slots, newest last
        self._waiting: Counter[Kind] = Counter()  # slots in next(), woken ones too
        self._starting: Counter[Kind] = Counter()  # slots not yet at next()
        self.slots: dict[str, Slot] = {}

    def queue(self, handle: str, request: LaunchRequest, envelope: NodeEnvelope) -> None:
        """Queue an attempt for the next slot of its kind."""
        self._queued.setdefault((request.machine, envelope), deque()).append((handle, request))

    def short(self) -> dict[Kind, int]:
        """Per kind, how many slots to start so that every queued attempt has one: those
        waiting are woken (the newest first: the ones idle longest then end at their
        ``LINGER``, so no more slots stay than the attempts keep busy), those starting
        will ask; only the rest need a new slot."""
        wanted = {}
        for kind, queued in self._queued.items():
            idle = self._idle.get(kind, [])
            for _ in range(min(len(queued), len(idle))):
                idle.pop().notify()
            missing = len(queued) - self._waiting[kind] - self._starting[kind]
            if missing > 0:
                wanted[kind] = missing
        return wanted

    def add(self, slot: str, kind: Kind) -> Slot:
        """A slot task is about to be submitted (before it can ask for an attempt)."""
        held = self.slots[slot] = Slot(kind)
        self._starting[kind] += 1
        return held

    def running(self, handle: str) -> bool:
        """Whether a slot runs the attempt."""
        return any(held.current == handle for held in self.slots.values())

    def clear(self, kind: Kind) -> list[str]:
        """Empty a kind's queue; returns the attempts that were in it."""
        queued = self._queued.pop(kind, deque())
        return [handle for handle, _ in queued]

    def next(self, slot: str, live: Callable[[str], bool]) -> tuple[str, LaunchRequest] | None:
        """The attempt ``slot`` runs next, waiting up to ``LINGER`` seconds for one of its
        kind (``live``: whether a queued attempt is still to run); None: the slot ends.
        Called with the lock held; it is released while waiting."""
        held = self.slots.get(slot)
        if held is None:  # ended (its task failed) before it asked
            return None
        held.current = None
        kind = held.kind
        if not held.took:
            held.took = True
            self._starting[kind] -= 1
        queued = self._queued.setdefault(kind, deque())
        idle = self._idle.setdefault(kind, [])
        woken = threading.Condition(self._lock)
        deadline = time.monotonic() + LINGER
        self._waiting[kind] += 1
        try:
            while True:
                while queued and not live(queued[0][0]):
                    queued.popleft()
                if queued and slot in self.slots:
                    handle, request = queued.popleft()
                    held.current = handle
                    return handle, request
                left = deadline - time.monotonic()
                if left <= 0 or slot not in self.slots:
                    self.slots.pop(slot, None)
                    return None
                idle.append(woken)
                woken.wait(left)
                if woken in idle:  # its time ran out (short() takes those it wakes)
                    idle.remove(woken)
        finally:
            self._waiting[kind] -= 1

    def ended(self, slot: str) -> Slot | None:
        """A slot's task ended: forget it; returns it (with the attempt it ran, if any)."""
        held = self.slots.pop(slot, None)
        if held is not None and not held.took:
            self._starting[held.kind] -= 1
        return held

    def discard(self, handles: set[str]) -> None:
        """Take attempts out of the queue (a restart dropped their records), so that no
        slot is started for them."""
        for queued in self._queued.values():  # in place: a waiting slot holds its deque
            kept = [entry for entry in queued if entry[0] not in handles]
            queued.clear()
            queued.extend(kept)

    def drop(self, handle: str) -> bool:
        """Take a queued attempt out of the queue; False: it is not queued."""
        for queued in self._queued.values():
            for entry in queued:
                if entry[0] == handle:
                    queued.remove(entry)
                    return True
        return False


class Slots:
    """The hub's part that runs its plain attempts in slots (a mixin of ``LogHub``: the
    lock, the records and how an outcome is recorded are the hub's)."""

    _lock: threading.Lock
    _changed: threading.Condition
    _attempts: dict[str, Any]

    def _init_slots(self) -> None:
        self._slots = SlotQueue(self._lock)
        self._slot: Any = ray.remote(run_slot)
        self._slot_tasks: dict[str, Any] = {}  # machine -> slot task options
        self._hub_name: str | None = None  # what the slots ask for (the latest submit's)
        self._doomed: set[str] = set()  # dropped by retain() while a slot runs them

    def _new_attempt(self) -> Any:  # the hub's record of a plain attempt
        raise NotImplementedError

    def _settle(self, handle: str, outcome: Outcome) -> None:  # the hub's, under its lock
        raise NotImplementedError

    def _finish(self, handle: str, outcome: Outcome) -> None:  # the hub's
        raise NotImplementedError

    def _queue(self, launches: list[Launch], name: str, envelope: NodeEnvelope) -> dict[str, str]:
        """Queue plain attempts for slots and start the slots they need. None is refused
        here: one that no slot could be started for is refused through the feed."""
        if launches:
            with self._lock:
                self._hub_name = name
                for handle, request, _ in launches:
                    if handle not in self._attempts:
                        self._attempts[handle] = self._new_attempt()
                        self._slots.queue(handle, request, envelope)
            self._start_slots()
        return {}

    def _start_slots(self) -> None:
        """Start the slots the queue is short of (after a submit; and at every read of
        the feed, for a slot that ended before it took its attempt), counted as starting
        in the same hold of the lock, so two callers never start the same ones. Where
        Ray refuses a slot task, the attempts queued for its kind are refused, as a
        launch Ray refused is (never started: ``Exit.unlaunched``)."""
        with self._lock:
            name = self._hub_name
            if name is None:  # nothing was ever queued here
                return
            wanted = self._slots.short()
            new = [(kind, uuid.uuid4().hex) for kind, n in wanted.items() for _ in range(n)]
            held = {slot: self._slots.add(slot, kind) for kind, slot in new}
        refused: set[Kind] = set()  # kinds Ray refused a slot of
        for kind, slot in new:
            machine, envelope = kind
            try:
                if kind in refused:
                    raise _Refused
                task = self._slot_tasks.get(machine)
                if task is None:
                    task = self._slot_tasks[machine] = self._slot.options(**task_options(machine))
                held[slot].ref = task.remote(name, slot, envelope)
            except Exception as exc:
                with self._changed:
                    self._slots.ended(slot)
                    if kind not in refused:
                        refused.add(kind)
                        for handle in self._slots.clear(kind):
                            self._settle(handle, ("refused", time.time(), str(exc)))
                continue
            held[slot].ref.future().add_done_callback(functools.partial(self._slot_done, slot))

    def take(self, slot: str, done: tuple[str, Any] | None) -> tuple[str, LaunchRequest] | None:
        """From a slot: how the attempt it ran ended (``("result", what run_shard
        returned)`` or ``("error", why)``; None: it ran none yet), and the next attempt of
        its kind for it, waited for up to ``slots.LINGER`` seconds (None: it ends). Called
        in the hub's ``slots`` concurrency group, so idle slots never hold its threads."""
        with self._changed:
            held = self._slots.slots.get(slot)
            handle = held.current if held is not None else None
            if handle is not None and done is not None:
                self._doomed.discard(handle)
                kind, what = done
                at = time.time()
                self._settle(
                    handle, ("result", at, tuple(what)) if kind == "result" else ("error", at, what)
                )
            return self._slots.next(slot, self._to_run)

    def _to_run(self, handle: str) -> bool:  # under the lock: still to run, not stopped
        attempt = self._attempts.get(handle)
        return attempt is not None and attempt.outcome is None

    def _slot_done(self, slot: str, future: Future[Any]) -> None:
        """A slot's task ended (in a Ray thread). The attempt it ran, if any, ended with
        it: lost with its worker or node, cancelled, or failed."""
        exc: BaseException | None = None
        try:
            future.result()
        except BaseException as error:
            exc = error
        with self._lock:
            held = self._slots.ended(slot)
            handle = held.current if held is not None else None
            attempt = self._attempts.get(handle) if handle is not None else None
            node, seen = (attempt.node, attempt.seen) if attempt else (None, None)
        if handle is None:
            return
        self._doomed.discard(handle)
        why = ("error", time.time(), "its slot ended without its outcome")
        self._finish(handle, failure(exc, node, seen) if exc is not None else why)


class _Refused(Exception):
    """A slot of a kind Ray already refused one of (see ``Slots._start_slots``)."""


def by_slot(launch: tuple[str, LaunchRequest, int | None]) -> bool:
    """Whether an attempt runs in a slot: a plain one (no gang, no image). A gang member
    runs in its own bundle; an image is pulled on the node before its process starts,
    and a kill must be able to stop that pull by cancelling the attempt's own task."""
    _, request, bundle = launch
    return bundle is None and request.image is None
