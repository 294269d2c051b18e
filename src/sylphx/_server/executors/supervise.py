"""The attempt supervisor: starts a batch of shard attempts and records how each ended.

Run as ``python -I -S supervise.py NOTIFY_FIFO BATCH_FILE`` in its own session, so it
outlives the control plane (a ``kill -9`` of the server does not reach it). With ``-`` for
BATCH_FILE it is a spare, started ahead of need: it reads the batch file's path from
stdin, and exits if stdin closes first. It imports
only the standard library and never sylphx, so it starts in a few milliseconds; one
supervisor serves a batch of the attempts the reconciler launched in one pass.

The batch file (written atomically by the control plane, removed by the supervisor once
it has claimed every attempt in it) is a JSON list of requests, each naming its attempt's
state directory (``dir``), ``argv``, ``env``, ``cwd`` and the ``stdout``/``stderr`` log
files. The supervisor creates the directories, so the control plane's pass does no
per-attempt file work.

Per attempt directory (files written atomically: tmp + rename; ``exit`` also fsynced, since
it must outlive even the host; the others only matter while the processes live):

- ``claim``         created with O_EXCL by whoever owns the attempt: this supervisor
                    (``"<pid> <start ticks>"``) or the control plane declaring it lost
                    (``"lost"``). Exactly one copy of an attempt can ever start.
- ``pid``           ``"<pid> <start ticks> <started ns>"`` of the shard (its own session)
- ``exit``          ``"<returncode> <started ns> <ended ns> <reason>"``; returncode is
                    negative for death by a signal, as in ``subprocess``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
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


Child = tuple[str, int, list[str]]  # a started shard: state dir, start ns, cgroup dirs
REAP_EVERY = 8  # while starting a batch, look for children that already ended this often


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


def resolve(program: str, env: dict[str, str]) -> str:
    """``program`` looked up on the shard's PATH, like ``subprocess`` does."""
    if "/" in program:
        return program
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        cand = os.path.join(folder or ".", program)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(2, "No such file or directory", program)


_made: set[str] = set()  # log folders this supervisor already created
_cwd = [""]  # the directory this supervisor is in (shards start in theirs)
_found: dict[tuple[str, str, str], str] = {}  # (program, PATH, cwd) -> executable


def spawn(req: dict[str, object]) -> int:
    """Start the shard in a new session with its logs as stdout/stderr; raises OSError."""
    argv = [str(a) for a in req["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in req["env"].items()}  # type: ignore[attr-defined]
    for log in (str(req["stdout"]), str(req["stderr"])):
        folder = os.path.dirname(log)
        if folder not in _made:
            os.makedirs(folder, exist_ok=True)
            _made.add(folder)
    cwd = str(req["cwd"])
    if _cwd[0] != cwd:
        os.chdir(cwd)
        _cwd[0] = cwd
    key = (argv[0], env.get("PATH", os.defpath), cwd)
    program = _found.get(key) or _found.setdefault(key, resolve(argv[0], env))
    append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(req["stdout"]), append, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(req["stderr"]), append, 0o644),
    ]
    return os.posix_spawn(program, argv, env, file_actions=actions, setsid=True)


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


def fail(state_dir: str, req: dict[str, object] | None, exc: BaseException) -> None:
    """Record a launch that never became a process: exit 127, reason LaunchError."""
    now = time.time_ns()
    if req is not None:
        try:
            os.makedirs(os.path.dirname(str(req["stderr"])), exist_ok=True)
            with open(str(req["stderr"]), "a") as fh:
                fh.write(f"sylphx: could not start the shard: {exc}\n")
        except OSError:
            pass
    write_atomic(os.path.join(state_dir, "exit"), f"127 {now} {now} LaunchError: {exc}")


def reap(children: dict[int, Child], *, block: bool) -> list[str] | None:
    """Record how every child that has ended did (with ``block``, after waiting for one),
    the exit files written together (:func:`write_all_atomic`); returns their state
    directories, to :func:`notify` -- None when there is no child left to wait for."""
    flags = os.WEXITED | os.WNOWAIT
    try:
        info = os.waitid(os.P_ALL, 0, flags if block else flags | os.WNOHANG)
    except ChildProcessError:
        return None
    except InterruptedError:
        return []
    records: list[tuple[str, str]] = []
    while info is not None:  # this child, and every other one that has ended too
        ended = time.time_ns()
        pid = info.si_pid
        try:  # noqa: SIM105 - stragglers in the group, while the leader pins the pgid
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        entry = children.pop(pid, None)
        if entry is not None:
            state_dir, started, cgroup = entry
            code = os.waitstatus_to_exitcode(status)
            reason = clear_cgroup(cgroup)
            records.append((os.path.join(state_dir, "exit"), f"{code} {started} {ended} {reason}"))
        try:
            info = os.waitid(os.P_ALL, 0, flags | os.WNOHANG)
        except ChildProcessError:
            info = None
    write_all_atomic(records)  # one journal commit for the lot, not one per shard
    return [os.path.dirname(path) for path, _ in records]


def main(argv: list[str]) -> int:
    fifo, batch = argv
    if batch == "-":  # a spare: started ahead, it waits for the path of its batch
        batch = sys.stdin.readline().strip()
        if not batch:
            return 0  # the control plane closed the pipe (or went away) without one
    me = f"{os.getpid()} {start_ticks(os.getpid())}"
    children: dict[int, Child] = {}
    with open(batch) as fh:
        requests: list[dict[str, object]] = json.load(fh)
    spawned = 0
    ended: list[str] = []  # announced once the whole batch has started (see below)
    for req in requests:
        state_dir = str(req["dir"])
        try:
            make_dir(state_dir)
        except OSError:
            continue  # the control plane records it lost when nobody claims it
        if not claim(state_dir, me):
            continue  # another supervisor has it, or the control plane declared it lost
        try:
            started = time.time_ns()
            before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            pid = spawn(req)
            after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        except (OSError, ValueError, KeyError) as exc:
            fail(state_dir, req, exc)
            ended.append(state_dir)
            continue
        ticks = spawn_ticks(pid, before, after)
        pid_text = f"{pid} {ticks} {started}"  # dies with the host: no fsync
        write_atomic(os.path.join(state_dir, "pid"), pid_text, sync=False)
        children[pid] = (state_dir, started, (req.get("cgroup") or {}).get("dirs", []))  # type: ignore[attr-defined]
        spawned += 1
        if spawned % REAP_EVERY == 0:  # record early exits while the batch still starts
            ended += reap(children, block=False) or []
    # Exits during the start are recorded at once but announced now: settling them
    # would only compete with the starting for the CPU.
    notify(fifo, ended)
    os.chdir("/")
    _cwd[0] = "/"
    try:  # noqa: SIM105 - every attempt in it is claimed: the batch has done its work
        os.unlink(batch)
    except OSError:
        pass
    while children:
        done = reap(children, block=True)
        if done is None:
            break
        notify(fifo, done)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(main(sys.argv[1:]))
