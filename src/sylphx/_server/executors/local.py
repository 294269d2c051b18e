"""Local executor: shard attempts are real processes on this host.

Each attempt runs in its own session (process group) with stdout and stderr
written straight to files, so capture costs no Python copying and no memory.
Exits are noticed through pidfds on one watcher thread, which wakes the
reconciler at once. argv, env, volume mounts (bubblewrap) and the process
group come from the shared shard runner (``runner.py``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ..controller.admission import Resources
from .base import Exit, LaunchRequest, Signal
from .runner import host_env, prepare, spawn


def _now() -> datetime:
    return datetime.now(UTC)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _verified_pid(handle: str) -> int | None:
    """The pid in ``pid:PID:START`` if that process is still the one we started."""
    parts = handle.split(":")
    if len(parts) != 3 or parts[0] != "pid" or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    return pid if _start_time(pid) == parts[2] else None


class LocalExecutor:
    """Runs attempts as child processes of the control plane on this host."""

    name = "local"

    def __init__(self, cpus: float, memory: int) -> None:
        self._capacity = Resources.of_host(cpus, memory)
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ended: dict[str, datetime] = {}  # handle -> when its pidfd fired
        self._failed: list[Exit] = []
        self._fds: dict[int, str] = {}  # pidfd -> handle
        self._epoll = select.epoll()
        self._wake: Callable[[], None] = lambda: None
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sylphx-exits", daemon=True)
        self._watcher.start()
        # Shards inherit the host environment, minus the control plane's own settings.
        self._base_env = host_env(os.environ)

    def capacity(self) -> Resources:
        return self._capacity

    def set_waker(self, wake: object) -> None:
        assert callable(wake)
        self._wake = wake

    def launch(self, request: LaunchRequest) -> str:
        argv, env = prepare(request, self._base_env)
        request.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        with open(request.stdout_path, "ab") as out, open(request.stderr_path, "ab") as err:
            proc = spawn(argv, env, request, out, err)
        handle = f"pid:{proc.pid}:{_start_time(proc.pid)}"
        with self._lock:
            self._procs[handle] = proc
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError:
                fd = -1  # no pidfd support: poll() still reaps on every tick
            if fd >= 0:
                self._fds[fd] = handle
                self._epoll.register(fd, select.EPOLLIN)
        return handle

    def _watch(self) -> None:
        while not self._closed.is_set():
            events = self._epoll.poll(0.5)
            if not events:
                continue
            now = _now()
            with self._lock:
                for fd, _ in events:
                    handle = self._fds.pop(fd, None)
                    self._epoll.unregister(fd)
                    os.close(fd)
                    if handle is not None:
                        self._ended.setdefault(handle, now)
            self._wake()

    def poll(self) -> list[Exit]:
        exits: list[Exit] = []
        with self._lock:
            exits, self._failed = self._failed, []
            for handle, proc in list(self._procs.items()):
                if handle not in self._ended and proc.poll() is None:
                    continue
                # Kill stragglers in the group while the leader's pid still pins the pgid.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                ended = self._ended.pop(handle, None) or _now()
                del self._procs[handle]
                exits.append(Exit(handle=handle, returncode=code, ended_at=ended))
        return exits

    def signal(self, handle: str, sig: Signal) -> None:
        """Signal the attempt's process group; also works for an attempt a previous
        server started, once its pid is proven to be the same process (start time)."""
        with self._lock:
            proc = self._procs.get(handle)
        if proc is not None and proc.returncode is not None:
            return
        pid = proc.pid if proc is not None else _verified_pid(handle)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM if sig == "term" else signal.SIGKILL)

    def alive(self, handle: str) -> bool:
        with self._lock:
            return handle in self._procs

    def close(self) -> None:
        self._closed.set()
        self._watcher.join(timeout=2)
        with self._lock:
            for fd in list(self._fds):
                os.close(fd)
            self._fds.clear()
            self._epoll.close()
