"""Ended attempts' cgroups are removed, also when the kernel still holds them for a while
(real cgroups: a host accumulating thousands of empty ones slows every cgroup operation)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from sylphx._server.executors.local.cgroups import Cgroups
from sylphx._server.executors.local.executor import LocalExecutor


def _cgroups() -> Cgroups:
    cgroups = Cgroups()
    cgroups.check()
    return cgroups


def _gone(dirs: tuple[str, ...]) -> bool:
    return not any(os.path.isdir(d) for d in dirs)


def test_a_cgroup_still_held_when_released_is_removed_by_a_later_sweep() -> None:
    cgroups = _cgroups()
    group = cgroups.create(f"held-{os.getpid()}", "nano")
    proc = subprocess.Popen([*group.join_prefix(), "sleep", "60"])
    try:
        for _ in range(100):  # until the sleep is inside
            if Path(group.dirs[0], "cgroup.procs").read_text().split():
                break
            time.sleep(0.02)
        cgroups.release(group)  # kills the sleep; its exit takes the kernel a moment
        for _ in range(100):
            if _gone(group.dirs):
                break
            time.sleep(0.05)
            cgroups.sweep()
        assert _gone(group.dirs)
        assert proc.wait(timeout=10) == -9
        assert cgroups._leftover == {}
    finally:
        proc.kill()
        proc.wait()
        group.remove()


def test_a_new_control_plane_removes_the_cgroups_of_attempts_that_ended(
    tmp_path: Path,
) -> None:
    cgroups = _cgroups()
    ended = cgroups.create(f"wrk_ended{os.getpid()}-0.1", "nano")
    live = cgroups.create(f"wrk_live{os.getpid()}-3.2", "nano")
    state = tmp_path / "state"
    (state / f"wrk_ended{os.getpid()}" / "0.1").mkdir(parents=True)
    (state / f"wrk_ended{os.getpid()}" / "0.1" / "exit").write_text("0 1 2 ")
    (state / f"wrk_live{os.getpid()}" / "3.2").mkdir(parents=True)  # no exit: still running
    executor = LocalExecutor(1, 1 << 30, state, sandbox=False, cgroups=cgroups)
    try:
        assert _gone(ended.dirs)
        assert not _gone(live.dirs)
    finally:
        executor.close()
        live.remove()
        ended.remove()


def test_a_cgroup_whose_limits_cannot_be_set_leaves_nothing_behind(tmp_path: Path) -> None:
    """Found by a review: the directories were made before a limit failed to be set, and
    stayed (a registry's skopeo made one a pull where the controllers are off)."""
    (tmp_path / "cgroup.controllers").write_text("")  # a v2 tree with no controllers on
    cgroups = Cgroups(tmp_path)
    (tmp_path / "sylphx").mkdir()
    try:
        cgroups.create("egress-1-x", "standard")
    except OSError:
        pass
    else:
        raise AssertionError("no limit could be set")
    assert os.listdir(tmp_path / "sylphx") == []


def test_the_egress_groups_of_a_control_plane_that_is_gone_are_removed() -> None:
    """A control plane killed mid-pull leaves its skopeo's cgroup: the next pull removes
    it (the executors' sweeps never touch these groups), and never a live plane's."""
    from sylphx._server.executors.envelope import egress
    from sylphx._server.executors.local.cgroups import EGRESS_PREFIX

    cgroups = _cgroups()
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = cgroups.create(f"{EGRESS_PREFIX}{dead.pid}-left", "nano")
    live = cgroups.create(f"{EGRESS_PREFIX}1-live", "nano")  # pid 1: alive
    try:
        assert all(not n.startswith(EGRESS_PREFIX) for n in cgroups.names())
        group = egress._cgroup()
        assert group is not None and _gone(left.dirs) and not _gone(live.dirs)
        egress._cgroups().release(group, wait=egress.GONE_SECONDS)
        assert _gone(group.dirs)
    finally:
        for g in (left, live):
            g.remove()


def test_a_process_that_cannot_join_its_cgroup_never_runs_unlimited(tmp_path: Path) -> None:
    """Found by a review: a failed join was ignored and the command ran without its
    tier's limits. It now ends with 125 before running anything."""
    from sylphx._server.executors.local.cgroups import ShardCgroup

    marker = tmp_path / "ran"
    group = ShardCgroup((str(tmp_path / "no-such-group"),), v2=True)
    done = subprocess.run([*group.join_prefix(), "touch", str(marker)], capture_output=True)
    assert done.returncode == 125 and not marker.exists()
