"""A Ray node's shard cgroups are removed for sure (real processes, sandbox and cgroups).

A Ray worker that died mid-shard (its node's raylet killed, a force-cancel) left its
shard's cgroup behind for good: ~1,450 of them piled up on the development VM, and
thousands make every cgroup operation on the host slower. Now a worker's first task
removes the cgroups of the node's dead workers, and an ended shard's removal is retried
while the kernel still holds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import pid_alive
from sylphx._core.errors import ExecutorError
from sylphx._server.executors.base import LaunchRequest, Signal
from sylphx._server.executors.local.cgroups import Cgroups, ShardCgroup
from sylphx._server.executors.ray import shardcgroups
from sylphx._server.executors.ray.remote import NodeEnvelope, run_streaming

pytestmark = pytest.mark.slow


@pytest.fixture
def cgroups() -> Cgroups:
    cg = Cgroups()
    try:
        cg.check()
    except (ExecutorError, OSError) as exc:
        pytest.skip(f"no usable cgroups here: {exc}")
    return cg


def ours(cgroups: Cgroups, run_id: str) -> list[str]:
    return [name for name in cgroups.names() if name.startswith(f"ray-{run_id}-")]


def _request(tmp_path: Path, run_id: str, index: int, command: list[str]) -> LaunchRequest:
    return LaunchRequest(
        run_id, index, 1, 64, True, command, {}, "nano", f"{tmp_path}/{index}.out",
        f"{tmp_path}/{index}.err", None,
    )  # fmt: skip


def _quiet(out: bytes, err: bytes) -> Signal | None:
    return None


def test_every_sandboxed_shards_cgroup_is_gone_when_its_task_returns(
    tmp_path: Path, cgroups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 sandboxed shards with enforced tiers, one of them leaving a process behind in a
    new session (out of its process group), the kernel refusing each cgroup's first two
    removals (EBUSY, as while a killed process is torn down): after each task body
    returns, its cgroup is gone."""
    real_remove = ShardCgroup.remove
    refused: dict[str, int] = {}

    def busy_at_first(group: ShardCgroup) -> bool:
        if "/ray-wrk_cg" not in group.dirs[0]:  # the node's cgroup probe, say
            return real_remove(group)
        refused[group.dirs[0]] = refused.get(group.dirs[0], 0) + 1
        return False if refused[group.dirs[0]] <= 2 else real_remove(group)

    monkeypatch.setattr(ShardCgroup, "remove", busy_at_first)
    envelope = NodeEnvelope(sandbox=True, enforce_tiers=True)
    run_id = f"wrk_cg{os.getpid()}"
    straggler = ["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & sleep 0.3"]
    for index in range(30):
        command = straggler if index == 0 else ["true"]
        code, _, _ = run_streaming(
            _request(tmp_path, run_id, index, command), f"ray:{run_id}:{index}:1", envelope, _quiet
        )
        assert code == 0
        assert ours(cgroups, run_id) == [], f"shard {index} left its cgroup"
    assert len(refused) == 30 and min(refused.values()) == 3  # refused twice, then removed


def test_a_workers_first_task_removes_what_dead_workers_left(cgroups: Cgroups) -> None:
    """Cgroups named for a worker that is gone are removed (what is in them killed); one
    of a live worker, or of the local executor's naming, stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = f"wrk_sw{os.getpid()}"
    gone = cgroups.create(f"ray-{run_id}-0-1-{dead.pid}", "nano")
    orphan = subprocess.Popen(  # a process a dead worker's shard left behind, in its cgroup
        [*gone.join_prefix(), "sleep", "300"], start_new_session=True
    )
    live = cgroups.create(f"ray-{run_id}-1-1-{os.getpid()}", "nano")
    local = cgroups.create(f"{run_id}-2.1", "nano")
    try:
        _wait_in(gone)
        shardcgroups._sweep_dead_workers(cgroups)
        assert orphan.wait(timeout=10) != 0
        assert not pid_alive(orphan.pid)
        names = cgroups.names()
        assert gone.dirs[0].rsplit("/", 1)[1] not in names
        assert live.dirs[0].rsplit("/", 1)[1] in names
        assert local.dirs[0].rsplit("/", 1)[1] in names
    finally:
        orphan.kill()
        orphan.wait()
        for group in (gone, live, local):
            cgroups.release(group)


def _wait_in(group: ShardCgroup) -> None:
    deadline = time.monotonic() + 10
    procs = Path(group.dirs[0]) / "cgroup.procs"
    while not procs.read_text().split():
        assert time.monotonic() < deadline, "the orphan never joined its cgroup"
        time.sleep(0.01)


def test_a_warm_worker_sweeps_again_every_sweep_seconds(
    cgroups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool that starts no new worker still clears what a dead one left: a task that
    makes its shard's cgroup removes dead workers' cgroups once SWEEP_SECONDS have passed
    since its worker last looked, and not before."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = f"wrk_pe{os.getpid()}"
    monkeypatch.setattr(shardcgroups, "_swept", [time.monotonic()])  # it has just looked
    made: list[ShardCgroup] = []
    try:
        made.append(cgroups.create(f"ray-{run_id}-0-1-{dead.pid}", "nano"))
        made.append(shardcgroups.create(cgroups, f"ray:{run_id}:1:1", "nano"))
        assert f"ray-{run_id}-0-1-{dead.pid}" in ours(cgroups, run_id)  # not yet
        monkeypatch.setattr(shardcgroups, "_swept", [time.monotonic() - 31])
        made.append(shardcgroups.create(cgroups, f"ray:{run_id}:2:1", "nano"))
        assert sorted(ours(cgroups, run_id)) == [
            f"ray-{run_id}-1-1-{os.getpid()}", f"ray-{run_id}-2-1-{os.getpid()}"
        ]  # fmt: skip
    finally:
        for group in made:
            cgroups.release(group)


def test_a_sweep_waits_on_stuck_cgroups_for_gone_seconds_in_all(
    cgroups: Cgroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel holding three dead workers' cgroups: the sweep (before a shard starts)
    retries them for GONE_SECONDS together, not each, and keeps them for later sweeps."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = f"wrk_st{os.getpid()}"
    stuck = [cgroups.create(f"ray-{run_id}-{i}-1-{dead.pid}", "nano") for i in range(3)]
    clock = [0.0]

    def tick() -> float:  # a fake clock: 0.1 s a reading
        clock[0] += 0.1
        return clock[0]

    tries: list[str] = []
    real_remove = ShardCgroup.remove

    def held(group: ShardCgroup) -> bool:
        if f"/ray-{run_id}-" not in group.dirs[0]:
            return real_remove(group)
        tries.append(group.dirs[0])
        return False

    monkeypatch.setattr(ShardCgroup, "remove", held)
    monkeypatch.setattr(shardcgroups.time, "monotonic", tick)
    monkeypatch.setattr(shardcgroups.time, "sleep", lambda seconds: None)
    try:
        shardcgroups._sweep_dead_workers(cgroups)
        # one deadline for all: ~10 tries, then one more each, and one each kept for later
        assert len(tries) <= shardcgroups.GONE_SECONDS / 0.1 + 2 * 3, len(tries)
        assert len(set(tries)) == 3  # each tried, none dropped
    finally:
        monkeypatch.undo()
        for group in stuck:
            cgroups.release(group)
