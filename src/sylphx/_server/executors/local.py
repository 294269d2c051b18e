"""Local executor: shard attempts are real processes on this host.

Each attempt runs in its own session (process group), inside its own cgroup (the
machine tier's CPU quota and memory ceiling) and its own bubblewrap sandbox, with
stdout and stderr written straight to files, so capture costs no Python copying and
no memory. Exits are noticed through pidfds on one watcher thread, which wakes the
reconciler at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..._errors import ExecutorError
from ..controller.admission import Resources
from ..images import ImageStore
from .base import Exit, LaunchRequest, Mount, Signal
from .cgroups import Cgroups, ShardCgroup
from .sandbox import Sandbox, bwrap_path, clean_env


def _now() -> datetime:
    return datetime.now(UTC)


def bwrap_prefix(mounts: list[Mount]) -> list[str]:
    """A bubblewrap prefix that shows the host as-is plus the volumes at their paths.

    The new root is a tmpfs holding binds of every top-level host entry, so a
    mount path that does not exist on the host is created in the tmpfs, not on
    the host.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ExecutorError(
            "volumeMounts need bubblewrap (bwrap) on the executor host. Fix: install the"
            " Debian package 'bubblewrap' (make system-deps), or run without volumeMounts."
        )
    args = [bwrap, "--tmpfs", "/"]
    for entry in sorted(os.listdir("/")):
        host = f"/{entry}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif entry == "proc":
            args += ["--proc", "/proc"]
        elif entry == "dev":
            args += ["--dev-bind", "/dev", "/dev"]
        elif os.path.isdir(host):
            args += ["--bind", host, host]
    for mount in mounts:
        args += ["--bind", str(mount.source), mount.target]
    return [*args, "--"]


def _check_program(
    program: str, path: str, workdir: Path | None, *, root: Path | None = None
) -> None:
    """Fail the launch (exit 127, LaunchError) when the program does not exist, as a shell
    would, instead of starting a sandbox that can only fail. ``root``: an image's rootfs
    (its symlinks may point anywhere inside it, so existence is all that is checked)."""
    if root is not None:
        dirs = [""] if "/" in program else path.split(":")
        rel = program.lstrip("/")
        found = any(os.path.lexists(root / d.lstrip("/") / rel) for d in dirs)
    elif "/" in program:
        target = Path(program) if program.startswith("/") else (workdir or Path("/")) / program
        found = os.access(target, os.X_OK) and target.is_file()
    else:
        found = shutil.which(program, path=path) is not None
    if not found:
        raise FileNotFoundError(2, "No such file or directory (or not executable)", program)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


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

    def __init__(
        self,
        cpus: float,
        memory: int,
        *,
        sandbox: bool = True,
        cgroups: Cgroups | None = None,
        hide: Sequence[Path] = (),
        scratch: Path | None = None,
        images: ImageStore | None = None,
    ) -> None:
        self._images = images
        self._scratch_root = scratch or Path(tempfile.gettempdir()) / "sylphx-work"
        self._capacity = Resources.of_host(cpus, memory)
        self._sandbox = sandbox
        self._cgroups = cgroups
        self._hide = tuple(hide)
        self._groups: dict[str, ShardCgroup] = {}
        if sandbox:
            bwrap_path()  # fail at start, not at the first launch
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
        self._host_path = os.environ.get("PATH")

    def capacity(self) -> Resources:
        return self._capacity

    def set_waker(self, wake: object) -> None:
        assert callable(wake)
        self._wake = wake

    def launch(self, request: LaunchRequest) -> str:
        workdir = request.working_dir
        if request.image is not None:
            argv, env, box = self._image_launch(request)
            cwd: Path | str = "/"
        else:
            env = clean_env(
                platform=request.shard_env(),
                run_env=request.env,
                secrets=request.secrets,
                image_env=None,
                host_path=self._host_path,
            )
            argv = list(request.command)
            if workdir is not None and not workdir.is_dir():
                raise ExecutorError(f"working directory {workdir} does not exist")
            _check_program(argv[0], env["PATH"], workdir)
            box = None
            if self._sandbox:
                box = Sandbox(
                    mounts=request.mounts,
                    hide=self._hide,
                    network=request.network,
                    working_dir=str(workdir or "/tmp"),
                    extra_ro=(workdir,) if workdir else (),
                )
        if box is not None:
            argv = box.argv() + argv
            cwd = "/"
        else:
            cwd = workdir or self._scratch(request.run_id)
            if request.mounts:
                argv = bwrap_prefix(request.mounts) + argv
        group = None
        if self._cgroups is not None:
            name = f"{request.run_id}-{request.index}-{request.attempt}"
            group = self._cgroups.create(name, request.machine)
            argv = group.join_prefix() + argv
        request.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(request.stdout_path, "ab") as out, open(request.stderr_path, "ab") as err:
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
        except BaseException:
            if group is not None:
                group.remove()
            raise
        handle = f"pid:{proc.pid}:{_start_time(proc.pid)}"
        with self._lock:
            self._procs[handle] = proc
            if group is not None:
                self._groups[handle] = group
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError:
                fd = -1  # no pidfd support: poll() still reaps on every tick
            if fd >= 0:
                self._fds[fd] = handle
                self._epoll.register(fd, select.EPOLLIN)
        return handle

    def _image_launch(self, request: LaunchRequest) -> tuple[list[str], dict[str, str], Sandbox]:
        """argv, env and sandbox for a shard of a container image (its rootfs as ``/``)."""
        if self._images is None or not self._sandbox:
            raise ExecutorError(
                "container images need the sandbox (SYLPHX_SANDBOX=on) and an image store"
            )
        image = self._images.resolve(request.image or "")
        argv = image.config.argv(request.command or None)
        env = clean_env(
            platform=request.shard_env(),
            run_env=request.env,
            secrets=request.secrets,
            image_env=image.config.env,
            host_path=None,
        )
        _check_program(argv[0], env["PATH"], None, root=image.rootfs)
        workdir = str(request.working_dir or image.config.working_dir or "/")
        box = Sandbox(
            base=image.rootfs,
            mounts=request.mounts,
            network=request.network,
            working_dir=workdir,
        )
        return argv, env, box

    def _scratch(self, run_id: str) -> Path:
        path = self._scratch_root / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

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
                reason = None
                group = self._groups.pop(handle, None)
                if group is not None:
                    if group.oom_killed():
                        reason = "OOMKilled: the shard went over its machine tier's memory"
                    group.kill_all()
                    group.remove()
                exits.append(Exit(handle=handle, returncode=code, ended_at=ended, reason=reason))
        return exits

    def signal(self, handle: str, sig: Signal) -> None:
        """SIGKILL: the attempt's whole process group and cgroup. SIGTERM: the shard's own
        processes (the sandbox's descendants), so the sandbox itself stays up and the
        shard can use its grace period. Also works for an attempt a previous server
        started, once its pid is proven to be the same process (start time)."""
        with self._lock:
            proc = self._procs.get(handle)
            group = self._groups.get(handle)
        if proc is not None and proc.returncode is not None:
            return
        pid = proc.pid if proc is not None else _verified_pid(handle)
        if pid is None:
            return
        if sig == "kill":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            if group is not None:
                group.kill_all()
            return
        if not self._sandbox:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            return
        for child in descendants(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGTERM)

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
