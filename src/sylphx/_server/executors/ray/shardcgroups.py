"""The cgroups a Ray node gives its shards: one per attempt, with the tier's limits, and
removed for sure once the attempt ends.

A shard's cgroup is made by the Ray worker that runs its task, named
``ray-RUN-INDEX-ATTEMPT-WORKERPID`` under the node's ``sylphx/`` cgroup (the local
executor's are ``RUN-INDEX.ATTEMPT``: the two never meet). When the shard ends, what is
left in it is killed and the cgroup removed, tried again for up to ``GONE_SECONDS`` while
the kernel still holds it (a killed process not torn down yet), then at each of the
worker's next tasks. A worker that dies mid-shard -- killed with its node's raylet, or
force-cancelled -- removes nothing: so a worker's first task removes the cgroups of
workers on its node that are gone (and kills what is still in them), and so does a task
every ``SWEEP_SECONDS`` after that: a warm pool that starts no new worker still clears
what a dead one left. Before, each such
death left its cgroups for good: the development VM had ~1,450 of them under
``sylphx/`` after a day of Ray work (P6 rounds stopped mid-way, node-loss tests), and
thousands make every cgroup operation on the host slower.
"""

from __future__ import annotations

import os
import time

from sylphx._core.errors import ExecutorError
from sylphx._server.executors.local.cgroups import Cgroups, ShardCgroup

__all__ = ["GONE_SECONDS", "PREFIX", "SWEEP_SECONDS", "create", "node_cgroups", "release"]

GONE_SECONDS = 1.0  # how long an ended shard's cgroup removal is retried at once
SWEEP_SECONDS = 30.0  # how often a worker's tasks look for dead workers' cgroups
PREFIX = "ray-"
_cgroups: list[Cgroups | None] = []  # per worker process: this node's cgroups, once checked
_swept = [0.0]  # per worker process: when it last looked for dead workers' cgroups


def node_cgroups() -> Cgroups | None:
    """This node's cgroups if it has usable ones (checked once per worker; that first
    time, the cgroups dead workers left are removed), else None."""
    if not _cgroups:
        cg: Cgroups | None = Cgroups()
        try:
            assert cg is not None
            cg.check()
        except (ExecutorError, OSError):
            cg = None
        _cgroups.append(cg)
        if cg is not None:
            _sweep_dead_workers(cg)
    return _cgroups[0]


def create(cgroups: Cgroups, handle: str, machine: str) -> ShardCgroup:
    """The attempt's cgroup with its tier's limits (this worker's leftovers retried first,
    and dead workers' removed if SWEEP_SECONDS have passed since this worker last looked)."""
    cgroups.sweep()
    if time.monotonic() - _swept[0] >= SWEEP_SECONDS:
        _sweep_dead_workers(cgroups)
    name = PREFIX + handle.removeprefix("ray:").replace(":", "-") + f"-{os.getpid()}"
    return cgroups.create(name, machine)


def release(cgroups: Cgroups, group: ShardCgroup, deadline: float | None = None) -> None:
    """Kill what is left in an ended attempt's cgroup and remove it, trying again while
    the kernel still holds it until ``deadline`` (monotonic; default GONE_SECONDS from
    now); past that, the worker's next tasks try again (:meth:`Cgroups.sweep`)."""
    deadline = time.monotonic() + GONE_SECONDS if deadline is None else deadline
    cgroups.release(group, wait=max(deadline - time.monotonic(), 0.0))


def _sweep_dead_workers(cgroups: Cgroups) -> None:
    """Remove the shard cgroups of Ray workers on this node that are gone."""
    _swept[0] = time.monotonic()
    deadline = _swept[0] + GONE_SECONDS
    for name in cgroups.names():
        worker = name.rpartition("-")[2]
        if not name.startswith(PREFIX) or not worker.isdigit() or _alive(int(worker)):
            continue
        group = cgroups.existing(name)
        if group is not None:  # GONE_SECONDS for them all: a start waits 1 s at most
            release(cgroups, group, deadline)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True
