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
