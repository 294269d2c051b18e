"""How the Ray task body starts a shard's process and ends its tree.

A plain shard dies with the Ray worker that started it through util-linux ``setpriv
--pdeathsig`` (or a ``preexec_fn``); a sandboxed one through bubblewrap's
``--die-with-parent``, and it starts only once this host has a start slot free
(:mod:`.startslots`). Its output is piped to the worker, which reads it in
:func:`.remote.run_streaming`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from pathlib import Path

from sylphx._server.executors.envelope.node import NodeFds

from . import startslots

__all__ = ["close", "kill_group", "leader_exited", "pidfd", "spawn", "up"]

_PR_SET_PDEATHSIG = 1
_setpriv: list[list[str]] = []  # per worker process: the setpriv prefix ([] if unusable)


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the Ray worker that started it dies (a lost node)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _death_prefix() -> list[str]:
    """argv prefix that makes the shard die with this worker: util-linux ``setpriv`` sets
    the parent-death signal and execs the command (checked once per worker). Without it,
    a ``preexec_fn`` does the same, but that makes Popen fork() the whole Ray worker
    instead of vfork(): under 20+ concurrent tasks per node that fork (page tables of a
    ~100 MB worker, copy-on-write faults in its threads) cost more than the shards."""
    if not _setpriv:
        found = shutil.which("setpriv")
        usage = ""
        if found is not None:
            usage = subprocess.run([found, "--help"], capture_output=True, text=True).stdout
        ok = found is not None and "--pdeathsig" in usage
        _setpriv.append([str(found), "--pdeathsig", "KILL", "--"] if ok else [])
    return _setpriv[0]


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def leader_exited(pid: int) -> bool:
    """Whether the leader ended, without reaping it (its zombie keeps the pgid ours)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


def _popen(
    argv: list[str], env: dict[str, str], cwd: Path, fds: NodeFds | None
) -> subprocess.Popen[bytes]:
    """The shard's process, its output piped here. A sandboxed shard dies with this worker
    through bwrap's --die-with-parent; a plain one through setpriv (or, without it, a
    preexec_fn)."""
    sandboxed = fds is not None
    prefix = [] if sandboxed else _death_prefix()
    return subprocess.Popen(
        prefix + argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        pass_fds=fds.pass_fds() if fds is not None else (),
        preexec_fn=None if prefix or sandboxed else _die_with_parent,
    )


def spawn(
    argv: list[str], env: dict[str, str], cwd: Path, fds: NodeFds | None
) -> tuple[subprocess.Popen[bytes], startslots.Slot | None]:
    """The shard's process; a sandboxed one once this host has a start slot free (the
    wait comes before the start: never billed)."""
    slot = startslots.take() if fds is not None else None
    try:
        return _popen(argv, env, cwd, fds), slot
    except BaseException:
        if slot is not None:
            slot.release()
        raise


def up(proc: subprocess.Popen[bytes], fds: NodeFds | None, slot: startslots.Slot | None) -> bytes:
    """Give a sandbox its network and let it go on; once the shard's command runs (the
    sandbox's mounts done) its start slot goes back. The line for its stderr, if any."""
    note = fds.started() if fds is not None else None
    if slot is not None:
        startslots.wait_started(proc.pid)
        slot.release()
    return note.encode() if note else b""


def close(proc: subprocess.Popen[bytes], exit_fd: int | None, slot: startslots.Slot | None) -> None:
    """The shard's process tree gone, its pipes and pidfd closed, its start slot back."""
    if slot is not None:
        slot.release()
    if proc.returncode is None:
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    if exit_fd is not None:
        os.close(exit_fd)


def pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (Linux 5.3+): select() sees its exit without polling."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
