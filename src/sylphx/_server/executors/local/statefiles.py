"""The files of an attempt's state directory, and the other small pieces the attempt
supervisor (:mod:`.supervise`) and the control plane share: the ``claim`` taken with
O_EXCL, ``pid`` and ``exit`` written atomically, the exit notes on the FIFO, a process's
start time in /proc, and clearing a shard's cgroup once it ended.

The disk room for ``pid`` and ``exit`` is taken before the shard starts (:func:`reserve`)
and overwritten in place later, so a disk that filled up meanwhile (the shard's own
output, or anything else) cannot keep an attempt's end off the record: ``exit.reserved``
holds the record once it is written and is then renamed to ``exit``. ``exit`` existing
means the attempt ended; a whole record left in ``exit.reserved`` (the rename failed, or
the supervisor died right after writing it) means the same (:func:`read_exit`).

Standard library only, and no sylphx import: the supervisor (``python -I -S``) imports it
from beside itself.
"""

from __future__ import annotations

import os
import select
import signal
import time


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


EXIT_ROOM = 4096  # bytes reserved for an exit record: one page, one block
PID_ROOM = 64  # ... and for the pid record
RESERVED = "exit.reserved"


def _zeros(fd: int, size: int) -> None:
    """Write ``size`` NUL bytes at ``fd``: real blocks (or pages), later overwritten in
    place without needing new ones (a preallocation alone would leave unwritten extents,
    whose first write may still need metadata blocks)."""
    view = memoryview(bytes(size))
    while view:
        view = view[os.write(fd, view) :]


def reserve(state_dir: str) -> int:
    """Take the room the attempt's records need before its shard starts: ``exit.reserved``
    (EXIT_ROOM bytes) and ``pid.tmp`` (PID_ROOM bytes, returned open for
    :func:`record_pid`). Raises OSError when the disk has no room: the shard must not
    start, since its end could not be recorded."""
    fd = os.open(f"{state_dir}/{RESERVED}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _zeros(fd, EXIT_ROOM)
    finally:
        os.close(fd)
    fd = os.open(f"{state_dir}/pid.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _zeros(fd, PID_ROOM)
    except BaseException:
        os.close(fd)
        raise
    return fd


def record_pid(fd: int, state_dir: str, text: str) -> None:
    """``pid`` from the room :func:`reserve` took (``fd``, closed here). No fsync: it dies
    with the host. A failure is let go: the shard runs on (unsignalled by the control
    plane) and its exit is still recorded."""
    try:
        data = text.encode()[:PID_ROOM]
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.rename(f"{state_dir}/pid.tmp", f"{state_dir}/pid")
    except OSError:
        pass
    finally:
        os.close(fd)


def record_exits(records: list[tuple[str, str]]) -> None:
    """Write each ``(state_dir, text)`` exit record into that attempt's ``exit.reserved``
    in place (no new blocks or inodes: a full disk cannot stop it), fsync them all (the
    first fsync commits the journal for the others), then rename each to ``exit``. Its
    first byte is written last, so a reader never takes a half-written record for a whole
    one; a record whose rename failed stays readable where it is. Never raises: the
    supervisor must go on supervising the others."""
    written = []
    for state_dir, text in records:
        data = (text + "\n").encode()
        try:
            fd = os.open(f"{state_dir}/{RESERVED}", os.O_WRONLY)
        except OSError:  # nothing reserved (a launch that failed before): the old way
            try:  # noqa: SIM105 - contextlib would slow every supervisor's start
                write_atomic(f"{state_dir}/exit", text)
            except OSError:
                pass
            continue
        try:
            os.pwrite(fd, data[1:EXIT_ROOM], 1)
            os.pwrite(fd, data[:1], 0)  # the record is whole from here on
            os.ftruncate(fd, min(len(data), EXIT_ROOM))
        except OSError:
            pass
        written.append((fd, state_dir))
    for fd, _ in written:
        try:  # noqa: SIM105 - as above
            os.fsync(fd)
        except OSError:
            pass
        os.close(fd)
    for _, state_dir in written:
        try:  # noqa: SIM105 - as above
            os.rename(f"{state_dir}/{RESERVED}", f"{state_dir}/exit")
        except OSError:
            pass


def unclaim(state_dir: str) -> None:
    """Give up a claimed attempt that cannot start (no room to :func:`reserve`): its claim
    emptied, the control plane records it as never started (LOST_AFTER_SECONDS later)."""
    try:  # noqa: SIM105 - contextlib would slow every supervisor's start
        os.truncate(f"{state_dir}/claim", 0)
    except OSError:
        pass


def launch_failed(
    state_dir: str, stderr: str, exc: BaseException, kind: str = "LaunchError"
) -> None:
    """Record a claimed launch that never became a process: exit 127, reason ``kind``
    (LaunchError: the shard's own; Lost: the platform's, retried as a preemption), the
    reason also at the end of ``stderr`` (the log)."""
    now = time.time_ns()
    why = str(exc).replace("\n", " ")[:2000]  # the record fits its reserved room
    if stderr:
        try:
            os.makedirs(os.path.dirname(stderr), exist_ok=True)
            with open(stderr, "a") as fh:
                fh.write(f"sylphx: could not start the shard: {why}\n")
        except OSError:
            pass
    record_exits([(state_dir, f"127 {now} {now} {kind}: {why}")])


def never_started(state_dir: str, stderr: str, exc: BaseException) -> bool:
    """The control plane's record of an attempt no supervisor could be started for: the
    attempt claimed "lost" (a late supervisor cannot start it), its exit written as by
    :func:`launch_failed`, as Lost: the host was out of processes or memory, nothing of
    the shard's, so it is retried as a preemption and never charged to its
    backoffLimitPerIndex. False when a supervisor claimed it first (it is that one's)."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        if not claim(state_dir, "lost"):
            return read_state(f"{state_dir}/claim") == "lost"
    except OSError:  # no room: recorded never started once LOST_AFTER_SECONDS passed
        return False
    launch_failed(state_dir, stderr, exc, "Lost")
    return True


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
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there never blocks us
    except FileNotFoundError:
        return None
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    return data.decode()


ExitRecord = tuple[int, int, int, str, tuple[str, ...]]


def read_exit(folder: str, *, reserved: bool = True) -> ExitRecord | None:
    """The attempt's exit record (:func:`parse_exit`) from ``exit``, or (``reserved``) a
    whole one left in ``exit.reserved``; None while the attempt has not ended."""
    text = read_state(f"{folder}/exit")
    if text is not None:
        return parse_exit(text.partition("\0")[0])  # \0: padding a truncation left
    if not reserved:
        return None
    text = (read_state(f"{folder}/{RESERVED}") or "").partition("\0")[0]
    try:
        return parse_exit(text) if text.endswith("\n") else None  # else not wholly written
    except ValueError:  # not a record: as if not written
        return None


def exit_recorded(folder: str) -> bool:
    """Whether the attempt ended: :func:`read_exit` without parsing a plain ``exit``."""
    return os.path.exists(f"{folder}/exit") or read_exit(folder) is not None


def parse_exit(text: str) -> ExitRecord:
    """An exit record: ``"CODE STARTED_NS ENDED_NS REASON"`` (returncode negative for a
    signal, as in subprocess), then optionally ``"logcap ENTRY..."``, the streams whose
    output was dropped: ``stdout``/``stderr`` past the cap, ``stdout:diskfull`` when the log
    disk was full (or over quota), ``stdout:ioerror`` when a write failed otherwise."""
    line, _, more = text.partition("\n")
    code, started, ended, reason = line.split(" ", 3)
    truncated = tuple(more.split()[1:]) if more.startswith("logcap ") else ()
    return int(code), int(started), int(ended), reason, truncated


def started_ns(folder: str) -> int | None:
    """When the attempt's process started (ns, wall clock) by its ``pid`` record, or None:
    not recorded yet, or not a record (never raises: an unsandboxed shard can write it)."""
    try:
        fields = (read_state(f"{folder}/pid") or "").split()
    except (OSError, ValueError):  # unreadable, or not text
        return None
    ok = len(fields) >= 3 and fields[2].isascii() and fields[2].isdigit()
    return int(fields[2]) if ok and len(fields[2]) <= 19 else None


def verified_pid(pid_text: str | None) -> int | None:
    """The pid in ``"PID START ..."`` if that process is still the one recorded."""
    if not pid_text or not pid_text.split()[0].isdigit():
        return None
    pid, ticks = pid_text.split()[:2]
    return int(pid) if start_ticks(int(pid)) == ticks else None


def never_claimed(folder: str, owner: str | None, since: float, lost_after: float) -> bool:
    """Whether an attempt nobody claimed is past hope (``lost_after`` seconds since it was
    handed over at monotonic ``since``), claiming it as lost so no late supervisor can
    start it."""
    if time.monotonic() - since < lost_after:
        return False  # its supervisor may still be starting
    try:
        if owner is None:
            make_dir(folder)  # (a supervisor that died before it made the folder: none)
            if not claim(folder, "lost"):
                return False  # a supervisor took it just now: next poll sees it
    except OSError:  # a full disk: an empty claim means the same, none means wait
        if read_state(f"{folder}/claim") is None:
            return False
    return True
