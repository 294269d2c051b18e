"""The attempt supervisor: starts a batch of shard attempts, relays their output to their
logs and records how each ended.

Run as ``python -I -S supervise.py NOTIFY_FIFO`` in its own session, so it outlives the
control plane (a ``kill -9`` of the server does not reach it); the control plane starts it
as ``python -I -S -c BOOT DIR NOTIFY_FIFO`` (see :mod:`.supervisors`), which imports it
from DIR and calls :func:`run`: the same, but from its cached bytecode (compiling this
file as a script took ~8 ms of each start). Its batches come on stdin,
one line of JSON each: a spare (started ahead of need) is blocked reading the first, a
supervisor started for a batch finds it there at once, and later batches may follow
while it supervises the earlier ones (:mod:`.inbox`), until the control plane closes its
stdin: then it exits once its shards have ended. Stdin closing before a whole line came
(the control plane let a spare go, or died mid-write) means no batch: it exits having
claimed nothing, and the control plane records unclaimed attempts lost after
LOST_AFTER_SECONDS. A batch never touches the disk: it holds every shard's environment,
granted secrets included. It imports only the standard library (and the modules beside
it: :mod:`shardlog`, :mod:`statefiles`, :mod:`netstack`, :mod:`inbox`) and never sylphx,
so it starts in a few milliseconds (~20 ms of CPU); a batch is the attempts the
reconciler launched in one pass, and one supervisor may serve several passes' batches.

The batch is a list of requests, each naming its attempt's state directory (``dir``),
``argv``, ``env``, ``cwd``, the ``stdout``/``stderr`` log files and optionally ``cgroup``
(``{"dirs": [...]}``), ``logcap`` (bytes per stream; DEFAULT_LOG_CAP), ``redact`` (secret
values to mask in the logs) and ``open`` (``[[fd, path], ...]``: files the shard gets
open read-only at those fds). The supervisor creates the directories, so the control
plane's pass does no per-attempt file work.

A shard's stdout and stderr are pipes to this supervisor, which moves what comes into the
log files (zero-copy, or redacted when the run has secrets: :mod:`shardlog`) up to
``logcap`` bytes each; past that -- or once the log disk is full -- the rest is read and
dropped, so the shard's writes keep succeeding, and the log ends with a marker line. One
epoll loop waits on every shard's pidfd (its end) and pipes (its output); other children
of this process are not its business. When a shard's leader ends, what is left of its
process group and cgroup is killed, its pipes are drained to their end (for at most
DRAIN_SECONDS), its logs closed, and only then is its exit recorded: an exit on record
means a complete log.

Per attempt directory (files written atomically: tmp + rename; ``exit`` also fsynced, since
it must outlive even the host; the others only matter while the processes live). The room
for ``pid`` and ``exit`` is taken before the shard starts and overwritten in place, so
neither needs a new block or inode once the shard runs (:func:`statefiles.reserve`): a
full disk never keeps an end off the record.

- ``claim``         created with O_EXCL by whoever owns the attempt: this supervisor
                    (``"<pid> <start ticks>"``) or the control plane declaring it lost
                    (``"lost"``). Exactly one copy of an attempt can ever start.
- ``pid``           ``"<pid> <start ticks> <started ns>"`` of the shard (its own session)
- ``exit``          ``"<returncode> <started ns> <ended ns> <reason>"``; returncode is
                    negative for death by a signal, as in ``subprocess``. When output was
                    dropped, a second line ``"logcap <stream>..."`` names the streams
                    (``stdout`` past the cap, ``stdout:diskfull`` on a full disk).
- ``exit.reserved`` the exit's room until it is renamed to ``exit`` (``pid.tmp``: pid's)
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

if __package__:  # imported by the control plane
    from . import netstack, shardlog, statefiles
    from .inbox import Inbox
else:  # run as a script (python -I -S: its own folder is not on sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import netstack  # type: ignore[no-redef,import-not-found]
    import shardlog  # type: ignore[no-redef,import-not-found]
    import statefiles  # type: ignore[no-redef,import-not-found]
    from inbox import Inbox  # type: ignore[no-redef,import-not-found]

PipeLog = shardlog.PipeLog
claim, clear_cgroup, make_dir = statefiles.claim, statefiles.clear_cgroup, statefiles.make_dir
notify, reserve, unclaim = statefiles.notify, statefiles.reserve, statefiles.unclaim
launch_failed, record_pid = statefiles.launch_failed, statefiles.record_pid
record_exits, spawn_ticks = statefiles.record_exits, statefiles.spawn_ticks
start_ticks = statefiles.start_ticks


REAP_EVERY = 8  # while starting a batch, look for children that already ended this often
DEFAULT_LOG_CAP = 1 << 30  # bytes per stream when the request names none
DRAIN_SECONDS = 2.0  # after a shard's end, the longest wait for its pipes' end
FDS_PER_SHARD = 5  # 2 pipes, 2 log files and a pidfd, held while the shard runs


def resolve(program: str, env: dict[str, str]) -> str:
    """``program`` looked up on the shard's PATH, like ``subprocess`` does."""
    if "/" in program:
        return program
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        cand = os.path.join(folder or ".", program)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(2, "No such file or directory", program)


class Child:
    """A started shard, from its spawn until its exit is on record."""

    __slots__ = (
        "cgroup", "code", "deadline", "ended", "logs", "net", "pid", "pidfd", "reason",
        "started", "state_dir",
    )  # fmt: skip

    def __init__(self, state_dir: str, started: int, cgroup: list[str]) -> None:
        self.state_dir = state_dir
        self.started = started  # ns, wall clock
        self.cgroup = cgroup  # its cgroup's folders
        self.pid = 0
        self.pidfd = -1  # readable once the leader ended
        self.logs: list[PipeLog] = []  # stdout, stderr
        self.ended = 0  # ns, wall clock: when the leader's end was seen
        self.code = 0  # returncode, as in subprocess
        self.reason = ""
        self.deadline = 0.0  # monotonic: the end of its pipes' drain
        self.net: netstack.Net | None = None  # its own network's set-up (slirp4netns)


_made: set[str] = set()  # log folders this supervisor already created
_cwd = [""]  # the directory this supervisor is in (shards start in theirs)
_found: dict[tuple[str, str, str], str] = {}  # (program, PATH, cwd) -> executable


def spawn(req: dict[str, object], child: Child) -> None:
    """Start the shard in a new session, its output piped to ``child.logs``; sets its pid
    and pidfd. Raises OSError (nothing left behind) when it could not start."""
    argv = [str(a) for a in req["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in req["env"].items()}  # type: ignore[attr-defined]
    cwd = str(req["cwd"])
    if _cwd[0] != cwd:
        os.chdir(cwd)
        _cwd[0] = cwd
    key = (argv[0], env.get("PATH", os.defpath), cwd)
    program = _found.get(key) or _found.setdefault(key, resolve(argv[0], env))
    limit = int(req.get("logcap") or DEFAULT_LOG_CAP)  # type: ignore[call-overload]
    secrets = [str(v) for v in req.get("redact") or ()]  # type: ignore[attr-defined]
    # The child's fds, in this order: stdio first (their sources are >= 3: ours are
    # taken), then whatever else the request asks for at fixed numbers.
    actions: list[tuple[object, ...]] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    ends: list[int] = []  # the pipes' write ends: the child's only
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            end = _pipe_to_log(child, name, str(req[name]), limit, secrets)
            ends.append(end)
            actions.append((os.POSIX_SPAWN_DUP2, end, fd))
        for fd, path in req.get("open") or ():  # type: ignore[attr-defined]
            actions.append((os.POSIX_SPAWN_OPEN, int(fd), str(path), os.O_RDONLY, 0))
        shard_env = req.get("shard_env")
        if shard_env is not None:  # the sandbox's last stage sets it (bwrap --args)
            ends.append(netstack.env_fd(shard_env))  # type: ignore[arg-type]
            actions.append((os.POSIX_SPAWN_DUP2, ends[-1], netstack.ENV_FD))
        if req.get("net"):  # bwrap's --info-fd/--block-fd: see netstack.Net
            child.net = netstack.Net()
            actions += [(os.POSIX_SPAWN_DUP2, src, dst) for src, dst in child.net.child_fds()]
        child.pid = os.posix_spawn(program, argv, env, file_actions=actions, setsid=True)
        if child.net is not None:
            child.net.spawned()
        try:
            child.pidfd = os.pidfd_open(child.pid)
        except OSError:  # unwatchable: it must not run unsupervised
            os.killpg(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            raise
    except BaseException:
        for piped in child.logs:
            piped.close()
        child.logs = []
        if child.net is not None:
            child.net.close()
            child.net = None
        raise
    finally:
        for end in ends:
            os.close(end)


def _pipe_to_log(child: Child, name: str, log: str, limit: int, secrets: list[str]) -> int:
    """A pipe whose read end the supervisor relays to ``log`` (``child.logs``); returns
    the write end, the shard's ``name`` stream."""
    folder = os.path.dirname(log)
    if folder not in _made:
        os.makedirs(folder, exist_ok=True)
        _made.add(folder)
    out, end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(out, False)
    try:
        child.logs.append(PipeLog(name, out, log, limit, secrets))
    except OSError:
        os.close(out)
        os.close(end)
        raise
    return end


def make_room(shards: int) -> None:
    """Raise this process's open-file limit (up to the hard one) when ``shards`` would not
    fit under it. The shards inherit the raised soft limit: it cannot be lowered around
    each spawn, since posix_spawn refuses to dup2 an fd at or above the caller's limit."""
    need = FDS_PER_SHARD * shards + 64
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need <= soft:
        return
    raised = (need if hard == resource.RLIM_INFINITY else min(need, hard), hard)
    try:  # noqa: SIM105 - contextlib would slow every supervisor's start
        resource.setrlimit(resource.RLIMIT_NOFILE, raised)
    except (OSError, ValueError):
        pass  # spawns past the limit fail as LaunchErrors


class Loop:
    """The started shards of this supervisor, watched in one epoll set: each one's pidfd
    (its leader's end) and the read ends of its pipes (its output)."""

    def __init__(self, inbox: Inbox | None = None) -> None:
        self.poller = select.epoll()
        self.inbox = inbox  # watched too while it is open: more batches may come
        if inbox is not None and inbox.open:
            self.poller.register(inbox.fd, select.EPOLLIN)
        self.exits: dict[int, Child] = {}  # pidfd -> the running shard
        self.pipes: dict[int, PipeLog] = {}  # pipe -> its log, until the pipe's end
        self.draining: list[Child] = []  # ended shards whose output may still come
        self.helpers: list[int] = []  # slirp4netns processes told to end, to reap

    def add(self, child: Child) -> None:
        self.exits[child.pidfd] = child
        self.poller.register(child.pidfd, select.EPOLLIN)
        for log in child.logs:
            self.pipes[log.pipe] = log
            self.poller.register(log.pipe, select.EPOLLIN)

    def busy(self) -> bool:
        return bool(self.exits or self.draining)

    def step(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds (-1: until something happens) and handle what
        happened: output moved to logs, ended shards finished off. Returns the state
        directories of the exits recorded (written together: :func:`record_exits`)."""
        if self.draining:
            soonest = min(c.deadline for c in self.draining) - time.monotonic()
            timeout = max(0.0, soonest if timeout < 0 else min(timeout, soonest))
        ended: list[Child] = []
        for fd, _ in self.poller.poll(timeout):
            if self.inbox is not None and fd == self.inbox.fd:
                if not self.inbox.pump():
                    self.poller.unregister(fd)
                continue
            log = self.pipes.get(fd)
            if log is not None:
                if not log.pump():
                    self._closed(log)
                continue
            child = self.exits.pop(fd, None)
            if child is not None:
                ended.append(child)
        for child in ended:
            self._leader_ended(child)
        self.helpers = [pid for pid in self.helpers if not netstack.reaped(pid)]
        return self._record() if self.draining else []

    def _closed(self, log: PipeLog) -> None:
        """The pipe is at its end (or given up on): stop watching it."""
        if self.pipes.pop(log.pipe, None) is not None:
            self.poller.unregister(log.pipe)

    def _leader_ended(self, child: Child) -> None:
        child.ended = time.time_ns()
        try:  # noqa: SIM105 - stragglers in the group, while the leader pins the pgid
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(child.pid, 0)
        child.code = os.waitstatus_to_exitcode(status)
        if child.net is not None:  # its slirp4netns ends with it
            child.net.close()
            if child.net.slirp_pid:
                self.helpers.append(child.net.slirp_pid)
        self.poller.unregister(child.pidfd)
        os.close(child.pidfd)
        child.reason = clear_cgroup(child.cgroup)
        for log in child.logs:  # usually already at its end: its writers are gone
            if log.pipe in self.pipes and not log.pump(budget=64):
                self._closed(log)
        child.deadline = time.monotonic() + DRAIN_SECONDS
        self.draining.append(child)

    def _record(self) -> list[str]:
        """Close the logs of ended shards whose pipes are at their end (or past their
        drain deadline), then write their exits."""
        now = time.monotonic()
        records: list[tuple[str, str]] = []
        waiting = []
        for child in self.draining:
            if now < child.deadline and any(log.pipe in self.pipes for log in child.logs):
                waiting.append(child)
                continue
            for log in child.logs:
                self._closed(log)
                log.close()
            text = f"{child.code} {child.started} {child.ended} {child.reason}"
            cut = [log.cut for log in child.logs if log.cut]
            if cut:
                text += "\nlogcap " + " ".join(cut)
            records.append((child.state_dir, text))
        self.draining = waiting
        record_exits(records)  # one journal commit for the lot, not one per shard
        return [state_dir for state_dir, _ in records]


def start_batch(requests: list[dict[str, object]], me: str, loop: Loop) -> list[str]:
    """Start a batch's attempts (those this supervisor claims); returns the state
    directories of those already ended (or that could not start), to announce."""
    make_room(len(loop.exits) + len(loop.draining) + len(requests))
    spawned = 0
    started: list[Child] = []
    ended: list[str] = []  # announced once the whole batch has started (see main)
    for req in requests:
        state_dir = str(req["dir"])
        try:
            make_dir(state_dir)
            if not claim(state_dir, me):
                continue  # another supervisor has it, or the control plane declared it lost
        except OSError:  # no room: the control plane records it never started
            continue
        try:
            pid_fd = reserve(state_dir)
        except OSError:  # no room for its end's record: it must not start
            unclaim(state_dir)  # recorded as never started
            continue
        child = Child(state_dir, time.time_ns(), (req.get("cgroup") or {}).get("dirs", []))  # type: ignore[attr-defined]
        try:
            before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            spawn(req, child)
            after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            os.close(pid_fd)
            launch_failed(state_dir, str(req.get("stderr") or ""), exc)
            ended.append(state_dir)
            continue
        ticks = spawn_ticks(child.pid, before, after)
        record_pid(pid_fd, state_dir, f"{child.pid} {ticks} {child.started}")
        loop.add(child)
        started.append(child)
        spawned += 1
        if spawned % REAP_EVERY == 0:  # record early exits while the batch still starts
            ended += loop.step(0)
    # after the whole batch: meanwhile the sandboxes made their namespaces
    slirps = {str(r["dir"]): str(r.get("net")) for r in requests}
    for child in started:
        if child.net is not None:
            why = child.net.attach(slirps[child.state_dir])
            if why is not None:  # it runs without a route out; its stderr says why
                child.logs[1].note(f"sylphx: the shard has no network: {why}\n")
    os.chdir("/")  # pin no shard's folder (a volume may want unmounting)
    _cwd[0] = "/"
    return ended


def main(argv: list[str]) -> int:
    fifo = argv[0]
    inbox = Inbox(sys.stdin.fileno())
    requests = inbox.first()
    if not requests:
        return 0
    me = f"{os.getpid()} {start_ticks(os.getpid())}"
    loop = Loop(inbox)
    # Exits during a start are recorded at once but announced after it: settling them
    # would only compete with the starting for the CPU.
    ended = start_batch(requests, me, loop)
    while True:
        batches = inbox.take()  # more batches may come until stdin ends
        for batch in batches:
            ended += start_batch(batch, me, loop)
        notify(fifo, ended)
        ended = []
        if batches:  # a start's steps may have read more (and stdin's end): take them first
            continue
        if not inbox.open and not loop.busy():
            return 0
        ended = loop.step(-1)


def run(argv: list[str]) -> None:
    """The supervisor process: ``main`` with the signals of a terminal ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(main(argv))


if __name__ == "__main__":
    run(sys.argv[1:])
