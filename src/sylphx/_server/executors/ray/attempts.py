"""The control plane's side of its hub's records (see ``hub.py``): which attempts this
control plane watches, what the hub's feed said of each, what it reported, and when the
hub may forget them.

An exit is reported once by ``poll()`` and the hub forgets it at the *next* poll: by then
the pass that settled it has committed -- or it failed, and ``recover()`` adopted the
attempt again, which reports the same exit once more. A control plane killed in between
leaves the record in the hub, and the next one adopts it. So no exit is lost between the
hub and the store, and settling ignores one already recorded: one usage row per attempt.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import ray

from sylphx._server.executors.base import Exit

from .gang import result_exit
from .outcome import Change, Outcome

_NODE_ID = re.compile(r"node ID: ([0-9a-f]+)")


@dataclass
class Known:
    """An attempt's record as the hub's feed told it."""

    gang: str | None  # run id of its gang's placement group
    started: float | None  # when its process started (epoch)
    outcome: Outcome | None  # None: its task has not ended


class Ledger:
    """The attempts one control plane watches, under one lock (the watcher thread writes
    what the hub's feed says; the reconciler's thread adopts, takes starts and exits)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.known: dict[str, Known] = {}  # every record the hub's feed told of
        self.live: set[str] = set()  # handed to the hub (or adopted), exit not yet reported
        self.ended: dict[str, None] = {}  # live attempts whose outcome came: the next poll's
        self.starts: dict[str, datetime] = {}  # live attempts' starts not yet taken
        self.told: dict[str, datetime] = {}  # ... taken by a pass not yet committed
        self.reported: dict[str, Exit] = {}  # by the last poll: the hub forgets them next
        self.again: list[Exit] = []  # reported before, adopted again: reported once more
        self.failed: list[Exit] = []  # launches Ray refused, for the next poll

    def note(self, changes: list[Change]) -> bool:
        """Record what the feed said; True when a watched attempt started or ended."""
        new = False
        with self.lock:
            for handle, gang, started, outcome in changes:
                old = self.known.get(handle)
                self.known[handle] = Known(gang, started, outcome)
                if handle not in self.live:
                    continue  # not (yet) adopted: adopt() looks at its record
                if outcome is not None and handle not in self.ended:
                    self.ended[handle] = None
                    new = True
                elif outcome is None and started is not None and (old is None or not old.started):
                    self.starts[handle] = _utc(started)
                    new = True
        return new

    def adopt(self, handle: str, hub_is_new: bool) -> tuple[bool, str | None]:
        """Watch an attempt a previous control plane (or a failed pass) handed over: True
        if it can be accounted for, with its gang. One the hub never heard of was never
        handed over -- unless the hub is new (the old one died, and its tasks with it)."""
        with self.lock:
            if handle in self.live:
                return True, None
            exit = self.reported.pop(handle, None)
            if exit is not None:  # its pass failed: report it once more
                self.again.append(exit)
                return True, None
            known = self.known.get(handle)
            if known is None:
                return not hub_is_new, None
            self.live.add(handle)
            if known.outcome is not None:  # it ended while nobody watched
                self.ended[handle] = None
            elif known.started is not None:
                self.starts[handle] = _utc(known.started)
            return True, known.gang

    def handing(self, handles: Collection[str]) -> None:
        """Attempts about to be handed to the hub: watched from now on."""
        with self.lock:
            self.live.update(handles)

    def refused(self, exits: list[Exit]) -> None:
        """Attempts the hub could not submit: their exits go out with the next poll."""
        with self.lock:
            self.live.difference_update(e.handle for e in exits)
            self.failed += exits

    def lose(self, why: str, now: datetime) -> list[str]:
        """The hub died: every watched attempt that had not ended is lost (an exit for the
        next poll); returns their handles."""
        with self.lock:
            lost = [h for h in self.live if h not in self.ended]
            self.live.difference_update(lost)
            self.failed += [Exit(h, -9, now, reason=why, lost=True) for h in lost]
            return lost

    def is_live(self, handle: str) -> bool:
        with self.lock:
            return handle in self.live

    def handed_over(self, handle: str) -> bool:
        """Whether the attempt reached the hub (or its exit is known)."""
        with self.lock:
            return handle in self.live or any(e.handle == handle for e in self.again)

    def take_starts(self) -> list[tuple[str, datetime]]:
        """The starts not taken yet; each is taken again after a pass rolled back (see
        :meth:`starts_settled`): an attempt never stays ``starting`` for a lost report."""
        with self.lock:
            starts, self.starts = self.starts, {}
            self.told |= starts
        return list(starts.items())

    def starts_settled(self, committed: bool) -> None:
        """The pass told of the starts taken since committed (they are stored), or was
        rolled back (they are taken again by the next one)."""
        with self.lock:
            if not committed:
                self.starts = self.told | self.starts
            self.told = {}

    def take(self) -> tuple[list[str], list[tuple[str, Outcome]], list[Exit]]:
        """For a poll: the handles the hub may forget now (reported by the previous poll,
        not adopted again since), the watched attempts that ended (with their outcomes),
        and exits to report as they are (refused launches, exits reported again)."""
        with self.lock:
            ack = list(self.reported)
            self.reported = {}
            for handle in ack:
                self.known.pop(handle, None)
            ended = []
            for handle in self.ended:
                known = self.known.get(handle)
                if known is not None and known.outcome is not None:
                    ended.append((handle, known.outcome))
            self.live.difference_update(self.ended)
            self.ended = {}
            ready, self.again, self.failed = self.again + self.failed, [], []
        return ack, ended, ready

    def now_reported(self, exits: list[Exit]) -> None:
        with self.lock:
            self.reported = {e.handle: e for e in exits}

    def keep_only(self, keep: set[str]) -> None:
        """Forget the records of attempts nobody will adopt (see ``LogHub.retain``)."""
        with self.lock:
            for handle in [h for h in self.known if h not in keep]:
                del self.known[handle]

    def watched(self) -> set[str]:
        with self.lock:
            return self.live | set(self.reported)


def outcome_exit(handle: str, outcome: Outcome, refresh_nodes: Callable[[], None]) -> Exit:
    """The Exit of an attempt's task from its outcome (see ``hub.Outcome``); a task lost
    with a node that is gone is ``Exit.lost`` (``NodeLost``), billed until it last shipped,
    and ``refresh_nodes()`` is called at once so capacity no longer counts that node."""
    kind, at = outcome[0], _utc(outcome[1])
    if kind == "result":
        return result_exit(handle, outcome[2], at)
    if kind == "cancelled":
        return Exit(handle, -9, at)
    if kind == "error":
        return Exit(handle, 1, at, reason=f"ExecutorError: {outcome[2]}")
    if kind == "refused":
        return Exit.unlaunched(handle, at, f"the Ray cluster refused it: {outcome[2]}")
    text, died, node, seen = outcome[2:]
    match = _NODE_ID.search(text)
    node = match.group(1) if match else node
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    alive = {n["NodeID"] for n in nodes if n.get("Alive")}
    if died or (node is not None and node not in alive):
        refresh_nodes()  # a node event: capacity without it, before any relaunch
        why = f"NodeLost: node {(node or '?')[:12]} died (preempted; retried elsewhere)"
        # billed until it was last heard from, not until Ray noticed the node gone
        return Exit(handle, -9, _utc(seen) if seen is not None else at, reason=why, lost=True)
    return Exit(handle, -9, at, reason=f"WorkerCrashed: {text.split(':')[0]}")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
