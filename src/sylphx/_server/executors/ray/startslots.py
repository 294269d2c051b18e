"""How many sandboxes a host starts at once: a few, each until its shard's command runs.

Starting a sandbox is mostly the kernel's mount work (bubblewrap's two stages build a
mount namespace each), done under the host's mount-namespace lock. A Ray node runs up to
``num_cpus / vcpu`` tasks at once (20 nano shards per 2 vCPU node), and a loopback or
small cluster puts several nodes on one host: measured on the 2-core development VM
with 3 nodes, 100 sandboxed shards started all at once took 119-133 s (sandboxes sat in
``D`` state on that lock), and 23-32 s with at most 4 starting at a time (BENCHMARKS.md,
P6). So a shard takes a start *slot* before its sandbox is spawned and gives it back once
the sandbox is up: a process of its tree is in a user namespace of its own (the last
stage cloned the shard's process, its mounts done) or runs something other than the
launch chain (``bwrap``, ``setpriv``), or its leader ended, or ``HOLD_SECONDS`` passed.
The wait for a slot comes before the process starts, so it is never billed; a start
waits at most ``WAIT_SECONDS``, then goes ahead without one.

The slots are ``SLOTS_PER_CPU`` per CPU of the host, as ``flock``ed files in a private
folder of ``/dev/shm`` (the host's, so every node on the host shares them; a sandbox
never sees it: its ``/dev`` is its own). Without that folder (or if it is not ours and
private), starts are not bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import stat
import time
from pathlib import Path

__all__ = ["HOLD_SECONDS", "SLOTS_PER_CPU", "Slot", "take", "wait_started"]

SLOTS_PER_CPU = 2
HOLD_SECONDS = 2.0  # the longest a slot is held for one start
WAIT_SECONDS = 30.0  # the longest a start waits for a slot
_OPEN = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
FOLDER = Path("/dev/shm/sylphx-start-slots")
CHAIN = frozenset({"bwrap", "setpriv"})  # what runs below the leader before the command


class Slot:
    """A held start slot (an open, locked file); give it back with :meth:`release`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd != -1:
            os.close(self._fd)  # the lock goes with the file
            self._fd = -1


def take(
    folder: Path = FOLDER, slots: int | None = None, patience: float = WAIT_SECONDS
) -> Slot | None:
    """A start slot, waiting for one while all are held (up to ``patience`` seconds:
    past it, or when this host has no usable folder for them, None: the start goes
    ahead unbounded rather than never)."""
    count = slots or SLOTS_PER_CPU * (os.cpu_count() or 1)
    fds = _open_all(folder, count)
    if fds is None:
        return None
    deadline = time.monotonic() + patience
    delay = 0.005
    try:
        while True:
            for fd in random.sample(fds, len(fds)):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                fds.remove(fd)
                return Slot(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    finally:
        for fd in fds:
            os.close(fd)


def _open_all(folder: Path, count: int) -> list[int] | None:
    """The slot files, opened; None unless ``folder`` is a private folder of ours (a
    folder anyone else could make or hold locks in would let them stall our starts)."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    fds: list[int] = []
    for i in range(count):
        try:
            fds.append(os.open(folder / str(i), _OPEN, 0o600))
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
    return fds


def wait_started(pid: int, hold: float = HOLD_SECONDS) -> None:
    """Return once the sandbox led by ``pid`` is up (see :func:`_up`), or ``pid`` ended,
    or ``hold`` seconds passed."""
    deadline = time.monotonic() + hold
    delay = 0.002
    own = _user_ns(os.getpid())
    while time.monotonic() < deadline:
        if not _alive(pid) or _up(pid, own):
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _alive(pid: int) -> bool:
    """Whether ``pid`` has not ended (a zombie has: it is waited for by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _up(leader: int, own: str | None) -> bool:
    """Whether a process below ``leader`` is in a user namespace of its own (the last
    stage cloned the shard's process: the mount work is done, and no tenant can put that
    off) or runs something other than the launch chain (an envelope without that stage)."""
    todo = _children(leader)
    while todo:
        pid = todo.pop()
        if own is not None and _user_ns(pid) not in (None, own):
            return True
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() not in CHAIN:
                return True
        todo += _children(pid)
    return False


def _user_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]
