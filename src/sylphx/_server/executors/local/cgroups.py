"""Machine tiers enforced with cgroups: one cgroup per shard attempt with the tier's
CPU quota, memory ceiling and a pids limit (v1 controllers or the v2 unified tree)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sylphx._core.errors import ExecutorError
from sylphx._core.machines import MACHINES

ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
PIDS_PER_VCPU = 1024  # a shard's pids limit: its tier's vCPUs times this ...
PIDS_FLOOR = 256  # ... but never below this (a nano tier still runs a shell pipeline)
EGRESS_PREFIX = "egress-"  # a registry's skopeo (envelope.egress): not an attempt's


def pids_max(machine: str) -> int:
    """The tier's process/thread ceiling: one shard cannot exhaust the host's pids."""
    return max(PIDS_FLOOR, int(MACHINES[machine].vcpu * PIDS_PER_VCPU))


# the shell prologue that moves the shard into its cgroups before exec'ing it
# (a join that fails ends it with 125: never unlimited)
_JOIN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done;'
    ' exec "$@"'
)


@dataclass(frozen=True)
class ShardCgroup:
    """The cgroup directories of one attempt (one per v1 controller, or one in v2), as
    the strings every shard launch passes on (no pathlib on that path)."""

    dirs: tuple[str, ...]
    v2: bool

    def join_prefix(self) -> list[str]:
        """argv prefix that enters the cgroup(s) and then execs the rest."""
        procs = [f"{d}/cgroup.procs" for d in self.dirs]
        return ["/bin/sh", "-c", _JOIN, "sylphx-cgroup", str(len(procs)), *procs]

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed anything in this cgroup."""
        for d in self.dirs:
            for name in ("memory.oom_control", "memory.events"):
                with contextlib.suppress(OSError), open(f"{d}/{name}") as fh:
                    for line in fh:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and value.strip() not in ("", "0"):
                            return True
        return False

    def kill_all(self) -> None:
        """SIGKILL whatever is left inside (escaped the process group, say)."""
        for d in self.dirs:
            with contextlib.suppress(OSError), open(f"{d}/cgroup.procs") as fh:
                for pid in fh.read().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the cgroup's directories; False while the kernel still holds one (a
        process in it not gone yet: rmdir fails with EBUSY)."""
        gone = True
        for d in self.dirs:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone


class Cgroups:
    """Creates per-attempt cgroups under ``sylphx/`` in each needed hierarchy."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()
        if self.v2:
            self.bases: tuple[Path, ...] = (root / "sylphx",)
        else:
            self.bases = tuple(root / c / "sylphx" for c in ("memory", "cpu", "pids"))
        self._base_strs = [str(base) for base in self.bases]
        self._lock = threading.Lock()
        self._leftover: dict[str, ShardCgroup] = {}  # ended attempts' cgroups still held

    def release(self, group: ShardCgroup, wait: float = 0.0) -> None:
        """An ended attempt's cgroup: kill what is left in it and remove it, trying again
        for ``wait`` seconds while the kernel still holds it (a sandbox's last process not
        reaped yet by whoever inherited it). One still held then is tried again by every
        :meth:`sweep` until it goes: otherwise it would stay forever, and thousands of
        them slow every cgroup operation on the host."""
        deadline = time.monotonic() + wait
        while True:
            group.kill_all()
            if group.remove():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        with self._lock:
            self._leftover[group.dirs[0]] = group

    def sweep(self) -> None:
        """Try again to remove the cgroups :meth:`release` could not."""
        with self._lock:
            groups = list(self._leftover.values())
        for group in groups:
            group.kill_all()
            if group.remove():
                with self._lock:
                    self._leftover.pop(group.dirs[0], None)

    def release_where(self, ended: Callable[[str], bool]) -> None:
        """:meth:`release` the attempt cgroups whose name ``ended`` says ended."""
        for name in self.names():
            group = self.existing(name) if ended(name) else None
            if group is not None:
                self.release(group)

    def names(self) -> list[str]:
        """The names of the attempt cgroups that exist now (e.g. left by a control plane
        that stopped before it could remove them)."""
        try:
            entries = os.scandir(self._base_strs[0])
        except OSError:
            return []
        with entries:
            return [
                e.name
                for e in entries
                if e.is_dir() and not e.name.startswith(("probe-", EGRESS_PREFIX))
            ]

    def check(self) -> None:
        """Fail loudly when cgroups cannot be used here."""
        try:
            for base in self.bases:
                base.mkdir(parents=True, exist_ok=True)
            if self.v2:
                (self.root / "cgroup.subtree_control").write_text("+memory +cpu +pids")
                (self.bases[0] / "cgroup.subtree_control").write_text("+memory +cpu +pids")
            probe = self.create("probe-" + str(os.getpid()), "nano")
            probe.remove()
        except OSError as exc:
            raise ExecutorError(
                f"cannot use cgroups under {self.root} to enforce machine tiers ({exc}). Fix: run"
                " the control plane as root on a host with cgroup v1 memory/cpu/pids controllers"
                " or cgroup v2, or set SYLPHX_UNENFORCED_TIERS=1 to run without enforced tiers."
            ) from exc

    def existing(self, name: str) -> ShardCgroup | None:
        """The cgroup of an attempt, if it still exists (e.g. after a restart)."""
        dirs = tuple(f"{base}/{name}" for base in self._base_strs)
        return ShardCgroup(dirs, self.v2) if os.path.isdir(dirs[0]) else None

    def create(self, name: str, machine: str) -> ShardCgroup:
        """The attempt's cgroup(s) with the tier's limits. Plain ``os`` calls on strings:
        a gang makes hundreds in one pass, and ``Path.write_text`` took twice as long as
        the kernel's own work (~600 us a shard against ~220 us on cgroup v1)."""
        tier = MACHINES[machine]
        quota = max(int(tier.vcpu * CPU_PERIOD_US), 1000)
        dirs = [f"{base}/{name}" for base in self._base_strs]
        for d in dirs:
            with contextlib.suppress(FileExistsError):
                os.mkdir(d)
        try:
            self._limit(dirs, machine, quota)
        except OSError:  # none of it is left behind
            ShardCgroup(tuple(dirs), self.v2).remove()
            raise
        return ShardCgroup(tuple(dirs), self.v2)

    def _limit(self, dirs: list[str], machine: str, quota: int) -> None:
        memory = str(MACHINES[machine].memory_bytes)
        if self.v2:
            d = dirs[0]
            _write(f"{d}/memory.max", memory)
            _write(f"{d}/memory.swap.max", "0", optional=True)
            _write(f"{d}/cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(f"{d}/pids.max", str(pids_max(machine)))
        else:
            mem, cpu, pids = dirs
            _write(f"{mem}/memory.limit_in_bytes", memory)
            _write(f"{mem}/memory.memsw.limit_in_bytes", memory, optional=True)
            _write(f"{cpu}/cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(f"{cpu}/cpu.cfs_quota_us", str(quota))
            _write(f"{pids}/pids.max", str(pids_max(machine)))


def _write(path: str, text: str, *, optional: bool = False) -> None:
    """Set a cgroup control file; ``optional``: one the kernel may lack (swap accounting)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        if optional:
            return
        raise
    try:
        os.write(fd, text.encode())
    except OSError:
        if not optional:
            raise
    finally:
        os.close(fd)
