"""What a Ray node adds around a sandboxed shard's process, as the local supervisor does
with its posix_spawn file actions: the compiled seccomp filter open at ``SECCOMP_FD``,
and for a shard with its own network (slirp4netns) bubblewrap's info and block pipes at
``INFO_FD``/``BLOCK_FD``, with slirp4netns attached once the sandbox exists (see
:mod:`.netstack`). A node that lacks a piece fails the launch naming it: never a weaker
envelope.

``subprocess.Popen`` (which vforks: the Ray worker is not copied, and its fds are closed
in the child) keeps the fds it passes at their own numbers, so a small shell in front of
the sandbox moves them into place and closes the originals (bash for the pipes: dash
takes single-digit fd numbers only).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import time

from sylphx._core.errors import ExecutorError
from sylphx._server.executors.local.netstack import (
    ENV_FD,
    SECCOMP_FD,
    Net,
    env_fd,
    reaped,
    slirp4netns_path,
)

from .sandbox import Policy
from .seccomp import build_filter

SLIRP_EXIT_SECONDS = 1.0  # after the shard, the longest wait for its slirp4netns to go
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_filter: list[tuple[int, int, int, int]] = []  # per worker: (pid, memfd, st_dev, st_ino)


def seccomp_filter() -> str:
    """A path that opens the compiled seccomp filter: a sealed (immutable) 0600 memfd this
    worker process holds, compiled once per worker, seen through ``/proc/PID/fd/N``; only
    root (or the worker's own uid) can open it there. Nothing on disk: nothing shared
    between nodes, nothing left behind when Ray kills the worker."""
    pid = os.getpid()
    if _filter:
        owner, fd, dev, ino = _filter[0]
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if owner == pid and (st.st_dev, st.st_ino) == (dev, ino):
                return f"/proc/{pid}/fd/{fd}"
        _filter.clear()  # a forked copy of the worker, or the fd was closed under us
    data = build_filter()
    fd = os.memfd_create("sylphx-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o600)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    _filter.append((pid, fd, st.st_dev, st.st_ino))
    return f"/proc/{pid}/fd/{fd}"


class NodeFds:
    """The extra fds of one sandboxed shard's process and, with slirp4netns, its network."""

    def __init__(self, filter_path: str | None, slirp: str | None, env: dict[str, str]) -> None:
        self.filter_path = filter_path  # opened at SECCOMP_FD, if the policy filters
        self.slirp = slirp  # slirp4netns, if the shard gets its own network
        self.net = Net() if slirp is not None else None
        self.env = env_fd(env)  # the shard's environment, for the last stage (ENV_FD)

    @classmethod
    def for_shard(cls, network: bool, policy: Policy, env: dict[str, str]) -> NodeFds:
        """What the shard's ``Sandbox(network=network, policy=policy).argv()`` expects.
        Raises ExecutorError when this node lacks a piece of it."""
        slirp = None
        if network and policy.network == "slirp4netns":
            slirp = slirp4netns_path()
            if slirp is None:
                raise ExecutorError(
                    "shards with network: true get their own network through slirp4netns,"
                    " which is not installed on this Ray node. Fix: install the Debian"
                    " package 'slirp4netns' on every node (make system-deps), or set"
                    " SYLPHX_SHARD_NETWORK=host (unsafe on shared machines)."
                )
        if shutil.which("bash") is None:
            raise ExecutorError(
                "sandboxed shards need bash on the Ray node (it hands bubblewrap the"
                " shard's pipes). Fix: install the Debian package 'bash'."
            )
        return cls(seccomp_filter() if policy.seccomp else None, slirp, env)

    def _moved(self) -> list[tuple[int, int]]:
        """(our fd, the child's number) pairs the prefix moves into place."""
        pairs = [(self.env, ENV_FD)]
        return pairs + (self.net.child_fds() if self.net is not None else [])

    def pass_fds(self) -> tuple[int, ...]:
        """The worker's fds the child gets (at their own numbers; the prefix moves them)."""
        return tuple(src for src, _ in self._moved())

    def prefix(self) -> list[str]:
        """argv that opens the filter at SECCOMP_FD, moves the pipes to INFO_FD and
        BLOCK_FD, closes their originals and execs the rest ([] if nothing to do)."""
        redirects = [f'{SECCOMP_FD}<"$f"'] if self.filter_path is not None else []
        # the numbers are ours (>= 10), not the tenant's
        redirects += [f"{dst}<&{src}" for src, dst in self._moved()]
        redirects += [f"{src}<&-" for src, _ in self._moved()]
        script = f'f=$1; shift; exec "$@" {" ".join(redirects)}'
        # bash (dash takes single-digit fd numbers only) -p: no BASH_ENV; it runs with the
        # launch chain's environment (CHAIN_ENV), not the tenant's
        shell = [str(shutil.which("bash")), "-p"]
        return [*shell, "-c", script, "sylphx-fds", self.filter_path or ""]

    def started(self) -> str | None:
        """The shard's process exists: give its sandbox the network and let it go on.
        Returns the line for its stderr when it runs without one, else None."""
        self.spawned()
        if self.net is None or self.slirp is None:
            return None
        self.net.spawned()
        why = self.net.attach(self.slirp)
        return None if why is None else f"sylphx: the shard has no network: {why}\n"

    def spawned(self) -> None:
        """The shard's process has its copy of the environment: ours can go."""
        if self.env != -1:
            os.close(self.env)
            self.env = -1

    def close(self) -> None:
        """The shard ended (or never started): its slirp4netns goes, and is reaped."""
        self.spawned()
        if self.net is None:
            return
        self.net.close()
        pid, self.net.slirp_pid = self.net.slirp_pid, 0
        if not pid:
            return
        deadline = time.monotonic() + SLIRP_EXIT_SECONDS
        while not reaped(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                return
            time.sleep(0.005)
