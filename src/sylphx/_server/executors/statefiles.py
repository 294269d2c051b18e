"""The files of an attempt's state directory, and the other small pieces the attempt
supervisor (:mod:`.supervise`) and the control plane share: the ``claim`` taken with
O_EXCL, ``pid`` and ``exit`` written atomically, the exit notes on the FIFO, a process's
start time in /proc, and clearing a shard's cgroup once it ended.

Standard library only, and no sylphx import: the supervisor (``python -I -S``) imports it
from beside itself.
"""

from __future__ import annotations

import os
import select
import signal


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")  # /proc's start times are in these


def spawn_ticks(pid: int, before: int, after: int) -> str:
    """:func:`start_ticks` of a child spawned between the CLOCK_BOOTTIME readings ``before``
    and ``after`` (ns): the kernel stamps a process's start on that clock, and /proc shows
    it rounded down to clock ticks, so when both readings fall in the same tick that tick
    is the answer (nearly always: a spawn takes ~1 ms, a tick is 10) without reading
    /proc -- which costs more than the rest of the shard's bookkeeping."""
    tick = before // TICK_NS
    return str(tick) if tick == after // TICK_NS else start_ticks(pid)


def make_dir(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` in one system call when the parent exists."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def write_atomic(path: str, text: str, *, sync: bool = True) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the whole new one;
    ``sync`` (fsync before the rename) for what must survive a host crash, not just ours."""
    write_all_atomic([(path, text)], sync=sync)


def write_all_atomic(files: list[tuple[str, str]], *, sync: bool = True) -> None:
    """:func:`write_atomic` for many files at once: all written, then (``sync``) all
    fsynced -- the first fsync commits the filesystem journal for the others -- then all
    renamed into place."""
    tmps = []
    for path, text in files:
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            tmps.append((fd, path))
    for fd, _ in tmps:
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    for _, path in tmps:
        os.rename(f"{path}.tmp", path)


def claim(state_dir: str, owner: str) -> bool:
    """Take the attempt (O_EXCL); False when someone already did."""
    try:
        fd = os.open(os.path.join(state_dir, "claim"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:  # no fsync: a claim only matters while the host (and so the processes) live
        os.write(fd, owner.encode())
    finally:
        os.close(fd)
    return True


def notify(fifo: str, state_dirs: list[str]) -> None:
    """Tell the control plane (if one is listening) which attempts just ended: a line
    each, their state directories, in writes of at most PIPE_BUF bytes (each atomic). A
    lost note costs nothing but latency: the control plane also scans every attempt's
    ``exit`` file now and then."""
    if not state_dirs:
        return
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        chunk = b""
        for line in (f"{d}\n".encode() for d in state_dirs):
            if len(chunk) + len(line) > select.PIPE_BUF:
                os.write(fd, chunk)
                chunk = b""
            chunk += line
        os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)


OOM_REASON = "OOMKilled: the shard went over its machine tier's memory"


def clear_cgroup(dirs: list[str]) -> str:
    """After the shard's leader ended: kill what is left in its cgroup (processes that
    left its process group), then remove the cgroup; returns the exit's reason ("" or
    OOMKilled). A cgroup that is not empty yet stays for the control plane to clear."""
    oom = False
    for folder in dirs:
        for name in ("memory.oom_control", "memory.events"):
            try:
                with open(os.path.join(folder, name)) as fh:
                    for line in fh:
                        key, _, value = line.partition(" ")
                        oom = oom or (key == "oom_kill" and value.strip() not in ("", "0"))
            except OSError:
                pass
        try:
            with open(os.path.join(folder, "cgroup.procs")) as fh:
                for pid in fh.read().split():
                    try:  # noqa: SIM105 - contextlib would slow every supervisor's start
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
        except OSError:
            pass
    for folder in dirs:
        try:  # noqa: SIM105 - as above
            os.rmdir(folder)
        except OSError:
            pass
    return OOM_REASON if oom else ""


def read_state(path: str) -> str | None:
    """A small state file's text, or None if it does not exist (plain ``os`` calls: a pass
    may read hundreds)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    return data.decode()


def verified_pid(pid_text: str | None) -> int | None:
    """The pid in ``"PID START ..."`` if that process is still the one recorded."""
    if not pid_text or not pid_text.split()[0].isdigit():
        return None
    pid, ticks = pid_text.split()[:2]
    return int(pid) if start_ticks(int(pid)) == ticks else None
