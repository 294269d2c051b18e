"""The one shard runner: builds a shard's argv and env and runs it as a real process.

Both placements use it. The local executor starts the process with stdout and
stderr going straight to the attempt's files (:func:`spawn`); a Ray task on a
remote node runs it with pipes and ships the output back in chunks while it
runs (:func:`run_streaming`), so the control plane appends to the same files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import IO

from ..._errors import ExecutorError
from .base import LaunchRequest, Mount, Signal

SIGNALS: dict[Signal, int] = {"term": signal.SIGTERM, "kill": signal.SIGKILL}
_PR_SET_PDEATHSIG = 1


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


def host_env(environ: Mapping[str, str], drop: tuple[str, ...] = ("SYLPHX_",)) -> dict[str, str]:
    """The node's environment minus the platform's own settings."""
    return {k: v for k, v in environ.items() if not k.startswith(drop)}


def prepare(
    request: LaunchRequest, base_env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """argv and env of one attempt: node env, then the run's env, then the shard contract."""
    if request.image is not None:
        raise ExecutorError("this executor cannot run container images yet")
    env = {**base_env, **request.env, **request.shard_env()}
    argv = list(request.command)
    if request.mounts:
        argv = bwrap_prefix(request.mounts) + argv
    if not request.working_dir.is_dir():
        raise ExecutorError(f"working directory {request.working_dir} does not exist")
    return argv, env


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the process that started it dies (a lost Ray worker)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: list[str],
    env: dict[str, str],
    request: LaunchRequest,
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    *,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the shard in its own session (process group) so its whole tree can be signalled."""
    return subprocess.Popen(
        argv,
        cwd=request.working_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
        preexec_fn=_die_with_parent if die_with_parent else None,
    )


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _leader_exited(pid: int) -> bool:
    """Whether the leader ended, without reaping it (its zombie keeps the pgid ours)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


Ship = Callable[[bytes, bytes], "Signal | None"]


def run_streaming(
    request: LaunchRequest,
    base_env: Mapping[str, str],
    ship: Ship,
    *,
    interval: float = 0.2,
    chunk: int = 1 << 20,
    drain_seconds: float = 2.0,
) -> int:
    """Run the attempt with piped output; ``ship(stdout, stderr)`` is called at least every
    ``interval`` seconds (and whenever ``chunk`` bytes are buffered) and returns the signal
    the control plane wants delivered, if any. Returns the raw return code (-N: signal N).
    Whatever happens (a ship error, a Ray cancel), the process tree is gone on return.
    """
    argv, env = prepare(request, base_env)
    proc = spawn(argv, env, request, subprocess.PIPE, subprocess.PIPE, die_with_parent=True)
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    open_fds = set(bufs)
    last_ship = time.monotonic()
    exited_at: float | None = None
    try:
        while True:
            readable: list[int] = []
            if open_fds:
                readable = select.select(list(open_fds), [], [], interval)[0]
            else:  # the shard closed its output; just watch for the exit
                time.sleep(0.02)
            for fd in readable:
                data = os.read(fd, 1 << 16)
                if data:
                    bufs[fd] += data
                else:
                    open_fds.discard(fd)
            if exited_at is None and _leader_exited(proc.pid):
                exited_at = time.monotonic()
                kill_group(proc.pid, signal.SIGKILL)  # stragglers; also closes their pipes
            done = exited_at is not None and (
                not open_fds or time.monotonic() - exited_at > drain_seconds
            )
            size = len(bufs[out_fd]) + len(bufs[err_fd])
            if done or size >= chunk or time.monotonic() - last_ship >= interval:
                sig = ship(bytes(bufs[out_fd]), bytes(bufs[err_fd]))
                bufs[out_fd].clear()
                bufs[err_fd].clear()
                last_ship = time.monotonic()
                if sig is not None and exited_at is None:
                    kill_group(proc.pid, SIGNALS[sig])
            if done:
                break
        return proc.wait()
    finally:
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
