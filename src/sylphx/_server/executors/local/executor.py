"""Local executor: shard attempts are real processes on this host.

Attempts run under :mod:`.supervise`, a small stdlib-only supervisor in its own
session: one per reconcile pass (a batch, split per CPU; spares kept started, see
:mod:`.supervisors`), not one per shard, and not a child that dies with the control
plane. It writes each shard's pid and exit status to the
attempt's state directory (atomically), so a restarted control plane re-adopts live
attempts and collects the ones that ended while it was down, with their true end
times. Each shard runs in its own session (process group), its own cgroup (the
machine tier's CPU quota and memory ceiling) and its own bubblewrap sandbox, with
stdout and stderr piped through its supervisor into its log files: the run's secret
values masked as they are written (logs on disk never hold them), each stream capped
at ``max_log_bytes`` (the attempt's exit names the streams that hit it). A pass's
launches reach the supervisors as one batch on their stdin pipes (never on disk: it
holds the shards' secrets; no per-attempt file work in the pass); each exit is
announced on a FIFO in the state directory, so a poll reads only the attempts that
ended, with a periodic scan of every attempt as the safety net.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path

from sylphx._core.errors import ExecutorError
from sylphx._core.machines import Resources
from sylphx._server.executors.base import LOST, Exit, LaunchRequest, Signal, Waker
from sylphx._server.executors.envelope.probe import check_envelope
from sylphx._server.executors.envelope.sandbox import Policy
from sylphx._server.images.policy import refuse as images_refused
from sylphx._server.images.store import ImageStore

from . import statefiles
from .cgroups import Cgroups, ShardCgroup
from .envelope import Envelopes
from .netstack import CHAIN_ENV, SECCOMP_FD, slirp4netns_path
from .processes import signal_shard
from .statefiles import OOM_REASON, read_exit, read_state, verified_pid, write_atomic
from .supervisors import Supervisors

NEVER_STARTED = f"{LOST}: the attempt's supervisor never started it"  # retried: a preemption
LOST_AFTER_SECONDS = 10.0  # an attempt nobody claimed in this long never started
SCAN_SECONDS = 1.0  # every tracked attempt's exit file is read this often (missed notes)
DEEP_SCAN_SECONDS = 2.0  # ... and its claim and supervisor checked this often


def _cgroup_name(handle: str) -> str:
    """``att:RUN/I.N`` -> ``RUN-I.N`` (rebuilt from the handle after a restart, too)."""
    return handle.removeprefix("att:").replace("/", "-")


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class LocalExecutor:
    """Runs attempts on this host under detached supervisors; handles are ``att:RUN/I.N``
    (state folder ``STATE/RUN/I.N``; older ``att:RUN/I/N`` handles still resolve)."""

    name = "local"
    # An attempt runs from its flush (its supervisor's batch); starts() then reports when
    # its process really started, which is later: its timeout counts from there.
    reports_starts = False
    batches_exits = False  # each supervisor's exit file wakes the reconciler

    def __init__(
        self,
        cpus: float,
        memory: int,
        state_dir: Path,
        *,
        sandbox: bool = True,
        cgroups: Cgroups | None = None,
        policy: Policy | None = None,
        scratch: Path | None = None,
        images: ImageStore | None = None,
        max_log_bytes: int = 1 << 30,
    ) -> None:
        self._capacity = Resources.of_host(cpus, memory)
        self._sandbox = sandbox
        self._cgroups = cgroups
        self._policy = policy or Policy()
        self._max_log_bytes = max_log_bytes  # per stream of an attempt (SYLPHX_MAX_LOG_BYTES)
        self._envelope = Envelopes(
            sandbox=sandbox,
            policy=self._policy,
            images=images,
            scratch_root=scratch or state_dir.parent / "work",
            host_path=os.environ.get("PATH"),
        )
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._seccomp: str | None = None
        if sandbox:  # fail at start, not at the first launch
            self._seccomp = check_envelope(self._policy, state_dir / "seccomp.bpf")
        self._fifo = state_dir / "exits.fifo"
        if not self._fifo.exists():
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self._fifo)
        # O_RDWR keeps a writer open, so the FIFO never reports hang-up between shards.
        self._fifo_fd = os.open(self._fifo, os.O_RDWR | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._tracked: dict[str, float] = {}  # handle -> monotonic time we began tracking
        self._pending: list[tuple[str, dict[str, object]]] = []  # launched since last flush
        self._ended: set[str] = set()  # handles announced on the FIFO since the last poll
        self._last_scan = self._last_deep = float("-inf")  # the first poll scans everything
        self._handed: set[str] = set()  # flushed to a supervisor by us, not yet ended
        self._unseen: set[str] = set()  # handed over; its process's start not reported
        self._reported: set[str] = set()  # ... reported to a pass not yet committed
        self._supervisors = Supervisors(self._fifo)
        self._wake: Callable[[], None] = lambda: None
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sylphx-exits", daemon=True)
        self._watcher.start()
        if cgroups is not None:  # those of ended attempts an earlier control plane left
            cgroups.release_where(self._ended_attempt)

    def _ended_attempt(self, cgroup: str) -> bool:
        """Whether the attempt whose cgroup is named ``cgroup`` (``RUN-I.N``) ended."""
        run_id, _, attempt = cgroup.rpartition("-")
        return bool(run_id) and statefiles.exit_recorded(f"{self.state_dir}/{run_id}/{attempt}")

    def capacity(self) -> Resources:
        return self._capacity

    def set_waker(self, wake: Waker) -> None:
        self._wake = wake

    def reserve_gang(self, run_id: str, n: int, machine: str) -> bool:
        return True  # admitted on this host's capacity alone

    def forget_run(self, run_id: str) -> None:
        shutil.rmtree(f"{self.state_dir}/{run_id}", ignore_errors=True)

    def _folder(self, handle: str) -> str:
        """The attempt's state folder, as a string (the per-shard paths: no pathlib)."""
        return f"{self.state_dir}/{handle.removeprefix('att:')}"

    def launch(self, request: LaunchRequest) -> str:
        """Queue the attempt for the next :meth:`flush` (nothing starts before it);
        idempotent per (run, index, attempt): an attempt already claimed by a supervisor
        is adopted, never started twice."""
        handle = f"att:{request.run_id}/{request.index}.{request.attempt}"
        folder = self._folder(handle)
        if os.path.exists(f"{folder}/claim"):
            self.adopt(handle)
            return handle
        argv, env, cwd = self._envelope(request)
        cgroup = None
        if self._cgroups is not None:  # the supervisor removes it when the shard ends
            group = self._cgroups.create(_cgroup_name(handle), request.machine)
            argv = group.join_prefix() + argv
            cgroup = {"dirs": list(group.dirs)}
        body: dict[str, object] = {
            "dir": folder,  # created by the supervisor, with the log folders
            "argv": argv,
            "env": env,
            "cwd": str(cwd),
            "stdout": request.stdout_path,
            "stderr": request.stderr_path,
            "cgroup": cgroup,
            "logcap": self._max_log_bytes,
        }
        if request.secrets:  # the values this attempt was given, masked in its logs
            body["redact"] = list(request.secrets.values())
        if self._sandbox:  # bwrap reads the filter, and waits for its network, at fds 3-5
            body["env"], body["shard_env"] = CHAIN_ENV, env  # see netstack.CHAIN_ENV
            body["open"] = [[SECCOMP_FD, self._seccomp]]
            slirp = request.network and self._policy.network == "slirp4netns"
            body["net"] = slirp4netns_path() if slirp else None
        with self._lock:
            self._tracked[handle] = time.monotonic()
            self._pending.append((handle, body))
        return handle

    def flush(self, *, discard: bool = False) -> None:
        """Start one supervisor for every attempt launched since the last flush (called
        once the pass that launched them committed), or with ``discard`` forget them: the
        pass was rolled back. A batch no supervisor could be started for is recorded as
        never started (exit 127, Lost: retried as a preemption) in its attempts' folders,
        durably, and reported by the next :meth:`poll`: never raised (it committed)."""
        with self._lock:
            batch, self._pending = self._pending, []
            if discard:  # the starts that pass was told of: told again to the next one
                self._unseen |= self._reported
            self._reported = set()
        if discard:
            self._forget([handle for handle, _ in batch])
            return
        if not batch:
            return
        with self._lock:
            self._handed.update(handle for handle, _ in batch)
            self._unseen.update(handle for handle, _ in batch)
        failed = self._supervisors.start([body for _, body in batch])
        if failed:
            folders = {str(body["dir"]): (handle, body) for handle, body in batch}
            for body, error in failed:
                handle, _ = folders[str(body["dir"])]
                self._unstarted(handle, str(body["stderr"]), error)
            self._wake()

    def drop(self, handles: Collection[str]) -> None:
        """Forget these queued launches (their rows were rolled back with a savepoint)."""
        with self._lock:
            keep = [(h, body) for h, body in self._pending if h not in handles]
            gone = [h for h, _ in self._pending if h in handles]
            self._pending = keep
        self._forget(gone)

    def _forget(self, handles: list[str]) -> None:
        with self._lock:
            for handle in handles:
                self._tracked.pop(handle, None)
        for handle in handles:  # its cgroup, made at launch (no process is in it)
            group = self._group(handle)
            if group is not None and self._cgroups is not None:
                self._cgroups.release(group)

    def _unstarted(self, handle: str, stderr: str, error: BaseException) -> None:
        why = ExecutorError(f"could not start its supervisor: {error}")
        if statefiles.never_started(self._folder(handle), stderr, why):
            with self._lock:
                self._ended.add(handle)  # the next poll reads its record

    def started(self, handle: str) -> bool:
        """Whether the attempt was ever handed to a supervisor: by us, or (its folder
        holds its claim or its records) by a control plane before a restart."""
        with self._lock:
            if handle in self._handed:
                return True
        try:
            return bool(os.listdir(self._folder(handle)))
        except OSError:
            return False

    def adopt(self, handle: str) -> bool:
        """Track an attempt a previous control plane started; False if it is not ours.
        Its folder may not exist yet (its supervisor is still starting): if nobody claims
        it within LOST_AFTER_SECONDS, :meth:`poll` records that it never started."""
        if not handle.startswith("att:"):
            return False
        os.makedirs(self._folder(handle), exist_ok=True)
        with self._lock:
            self._tracked.setdefault(handle, time.monotonic())
        return True

    def _watch(self) -> None:
        poller = select.epoll()
        poller.register(self._fifo_fd, select.EPOLLIN)
        partial = b""
        try:
            while not self._closed.is_set():
                if not poller.poll(0.5):
                    continue
                data = partial
                with contextlib.suppress(BlockingIOError):
                    while chunk := os.read(self._fifo_fd, 65536):
                        data += chunk
                *lines, partial = data.split(b"\n")
                root = str(self.state_dir) + "/"
                ended = {
                    "att:" + line.decode(errors="replace").removeprefix(root) for line in lines
                }
                with self._lock:
                    self._ended |= ended
                self._wake()
        finally:
            poller.close()

    def check_images(self) -> None:
        """Images run only in the sandbox (their rootfs is its root)."""
        if not self._sandbox:
            raise images_refused(
                "container images need the sandbox, and SYLPHX_SANDBOX is off on this server",
                "run without an image, or ask the operator to turn the sandbox on",
            )

    def starts(self) -> list[tuple[str, datetime]]:
        """When the processes of attempts handed over since really started, as their
        supervisors recorded it with their pid: they run from their launch, and this is
        later (a busy host's supervisor spawns them seconds after). Each is reported until
        a pass that was told of it commits (the next :meth:`flush`), then never again."""
        with self._lock:
            unseen = list(self._unseen)
        at = ((handle, statefiles.started_ns(self._folder(handle))) for handle in unseen)
        seen = [(handle, _from_ns(ns)) for handle, ns in at if ns is not None]
        with self._lock:
            self._unseen.difference_update(handle for handle, _ in seen)
            self._reported.update(handle for handle, _ in seen)
        return seen

    def poll(self) -> list[Exit]:
        """Attempts whose exit was recorded (or that were lost) since the last call: the
        ones announced on the FIFO, and every tracked one on the periodic scans."""
        self._supervisors.tend()
        now = time.monotonic()
        with self._lock:
            ended, self._ended = self._ended, set()
            deep = now - self._last_deep >= DEEP_SCAN_SECONDS
            scan = deep or now - self._last_scan >= SCAN_SECONDS
            if scan:
                self._last_scan = now
            if deep:
                self._last_deep = now
            pending = {handle for handle, _ in self._pending}
            tracked = [
                (handle, since)
                for handle, since in self._tracked.items()
                if handle not in pending and (scan or handle in ended)
            ]
        exits = []
        for handle, since in tracked:
            exit = self._check(handle, since, deep=deep or handle in ended)
            if exit is not None:
                exits.append(exit)
        with self._lock:
            for exit in exits:
                self._tracked.pop(exit.handle, None)
                self._handed.discard(exit.handle)
                self._unseen.discard(exit.handle)  # its exit carries its start
        if deep and self._cgroups is not None:
            self._cgroups.sweep()
        return exits

    def _check(self, handle: str, since: float, *, deep: bool = True) -> Exit | None:
        """The attempt's recorded exit; ``deep`` (also for an announced one) also reads a
        record its supervisor could only leave in the reserved room, and settles one that
        can never end (never claimed, or its supervisor died)."""
        folder = self._folder(handle)
        text = read_exit(folder, reserved=deep)
        if text is None and not deep:
            return None
        if text is not None:
            code, started, ended, reason, cut = text
            group = self._group(handle)
            if group is not None and self._cgroups is not None:
                if group.oom_killed():
                    reason = OOM_REASON
                self._cgroups.release(group)
            at, end = _from_ns(started), _from_ns(ended)
            why = reason or None
            return Exit.recorded(handle, code, end, why, started_at=at, log_truncated=cut)
        owner = read_state(f"{folder}/claim")
        if not owner:  # unclaimed, or claimed this instant (created, owner not yet written)
            if not statefiles.never_claimed(folder, owner, since, LOST_AFTER_SECONDS):
                return None
            return self._settle(handle, 127, NEVER_STARTED)
        if owner == "lost":
            return self._settle(handle, 127, NEVER_STARTED)
        if verified_pid(owner) is not None:
            return None
        if read_exit(folder) is not None:  # the supervisor finished just now
            return self._check(handle, since)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pid = verified_pid(read_state(f"{folder}/pid"))
            if pid is not None:
                os.killpg(pid, signal.SIGKILL)
        return self._settle(handle, -9, f"{LOST}: the attempt's supervisor died")

    def _settle(self, handle: str, code: int, reason: str) -> Exit:
        """Record an exit on the supervisor's behalf, so a later control plane sees it too."""
        now = time.time_ns()
        try:
            write_atomic(f"{self._folder(handle)}/exit", f"{code} {now} {now} {reason}")
        except OSError:  # a full disk: the same exit, unwritten (the store may take it)
            return Exit.recorded(handle, code, _from_ns(now), reason, started_at=_from_ns(now))
        return self._check(handle, 0) or Exit.recorded(handle, code, _from_ns(now), reason)

    def signal(self, handle: str, sig: Signal) -> None:
        """Signal the attempt's process group, once its pid is proven to be the same
        process (start time); works for attempts a previous server started too."""
        folder = self._folder(handle)
        if statefiles.exit_recorded(folder):
            return
        pid = verified_pid(read_state(f"{folder}/pid"))
        if pid is not None:
            group = self._group(handle) if sig == "kill" else None
            signal_shard(pid, sig, sandboxed=self._sandbox, group=group)

    def _group(self, handle: str) -> ShardCgroup | None:
        return None if self._cgroups is None else self._cgroups.existing(_cgroup_name(handle))

    def alive(self, handle: str) -> bool:
        with self._lock:
            return handle in self._tracked

    def close(self) -> None:
        self._closed.set()
        self._watcher.join(timeout=2)
        self._supervisors.close()
        os.close(self._fifo_fd)
