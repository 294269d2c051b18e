"""The supervisor processes of the local executor: open ones take batches, spares wait.

A pass's launches become one batch, split over up to one supervisor (:mod:`.supervise`)
per CPU. A supervisor is a fresh Python interpreter (~20 ms of CPU), and starting one is
most of the way from a pass to its first shard. So a supervisor given a batch stays
*open* for OPEN_SECONDS: the batches of the passes that follow go to it too, up to
OPEN_SHARDS shards in all (a stream of small runs -- many passes of a few launches each
-- would otherwise start an interpreter per pass: P7); then its stdin is closed and it
exits once its shards have ended. And once this host has launched anything, a spare per
CPU is kept started and idle (blocked reading its stdin). A batch goes to an open
supervisor with room that has read every batch before (its pipe is empty), else to a
spare, else to a supervisor started for it; either way the batch itself (one line of
JSON) is written to the supervisor's stdin pipe, never to a file: it holds every shard's
environment, secrets included. The pipe is first enlarged to hold the whole batch, so
the write never waits for the supervisor to read (the reconciler's pass must not); where
it cannot be (an unprivileged control plane past the system's pipe size limit) a thread
writes it, and that supervisor takes no more. Spares are started again only a while
after the last batch, so they never compete with one for the CPU; when the control plane
goes away every stdin closes: spares exit, the others once their shards have ended.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

HERE = str(Path(__file__).parent)  # supervise.py and shardlog.py, imported from here
# supervise.py imported, not run as a script: from its cached bytecode (compiling it cost
# ~8 ms of every supervisor's start)
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); import supervise; supervise.run(sys.argv[2:])"
SHARDS_PER_SUPERVISOR = 64  # a bigger batch is split over up to one supervisor per CPU
SPARE_DELAY_SECONDS = 0.3  # spare supervisors are started this long after a batch
OPEN_SECONDS = 1.0  # a supervisor takes further batches this long after its first
OPEN_SHARDS = 256  # ... and until it was given this many shards in all
PIPE_BYTES = 1 << 16  # a pipe's default capacity

Proc = subprocess.Popen[bytes]
log = logging.getLogger("sylphx.executor")


def fit_pipe(fd: int, size: int) -> bool:
    """Make the (empty) pipe ``fd`` hold ``size`` bytes; False when it cannot."""
    if size <= PIPE_BYTES:
        return True
    want = 1 << (size - 1).bit_length()  # the kernel rounds to a power of two anyway
    try:
        if int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)) >= size:
            return True
        return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, want)) >= size
    except OSError:  # over /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE
        return False


def unread(fd: int) -> int:
    """Bytes in the pipe ``fd`` (either end) that its reader has not read yet."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


@dataclass
class _Open:
    """A supervisor that still takes batches: its stdin is open."""

    proc: Proc
    given: int  # shards handed to it so far
    since: float  # monotonic time of its first batch


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Supervisors:
    """Starts batches of attempt requests under supervisors that report on ``fifo``."""

    def __init__(self, fifo: Path) -> None:
        self._fifo = fifo
        self._lock = threading.Lock()
        self._running: list[Proc] = []  # given a batch, not yet reaped
        self._open: list[_Open] = []  # of those, the ones that take more batches
        self._spares: list[Proc] = []  # idle, waiting for a batch
        self._last_batch = float("-inf")  # monotonic time the last batch was started

    def start(self, requests: list[dict[str, object]]) -> list[tuple[dict[str, object], OSError]]:
        """Start ``requests`` (the supervisor's JSON request bodies) as one batch; the
        requests no supervisor could be started for (the host out of processes or
        memory), with why. Those of the other parts of the batch do start."""
        parts = min(os.cpu_count() or 1, -(-len(requests) // SHARDS_PER_SUPERVISOR))
        size = -(-len(requests) // parts)
        failed: list[tuple[dict[str, object], OSError]] = []
        used: set[int] = set()  # the parts of a batch go to different supervisors
        for first in range(0, len(requests), size):
            part = requests[first : first + size]
            batch = json.dumps(part, separators=(",", ":"))
            try:
                used.add(self._hand(f"{batch}\n".encode(), len(part), used))
            except OSError as exc:  # Popen: EAGAIN, ENOMEM, EMFILE...
                failed += [(request, exc) for request in part]
        self._last_batch = time.monotonic()
        return failed

    def _hand(self, batch: bytes, count: int, avoid: Collection[int] = ()) -> int:
        """Give ``batch`` (``count`` shards) to an open supervisor with room (not one of
        the pids ``avoid``), a spare or, if none (or the one picked died), a new
        supervisor; returns the pid of the one that took it."""
        given, since = 0, time.monotonic()
        entry = self._take_open(count, avoid)
        if entry is not None:
            taker: Proc | None = entry.proc
            given, since = entry.given, entry.since
        else:
            taker = self._take_spare()
            if taker is not None:
                with self._lock:
                    self._running.append(taker)
        while True:
            if taker is None:
                taker, given, since = self._spawn(), 0, time.monotonic()
                with self._lock:
                    self._running.append(taker)
            stdin = taker.stdin
            assert stdin is not None
            if not fit_pipe(stdin.fileno(), len(batch)):
                threading.Thread(target=self._write, args=(batch, taker), daemon=True).start()
                return taker.pid  # the write would wait for the reader: a thread's, no more
            try:
                write_all(stdin.fileno(), batch)  # into the pipe at once: it starts the batch
            except BrokenPipeError:  # it died since it was picked: a fresh one
                stdin.close()
                taker = None
                continue
            except OSError:  # it takes nothing more; the batch's launches fail
                stdin.close()
                raise
            if given + count >= OPEN_SHARDS:
                stdin.close()  # full: it ends once its shards have
                return taker.pid
            with self._lock:
                self._open.append(_Open(taker, given + count, since))
            return taker.pid

    def _take_open(self, count: int, avoid: Collection[int]) -> _Open | None:
        """An open supervisor with room for ``count`` more shards that has read every
        batch it was given: its pipe is empty, so a write that fits its size cannot wait
        (a pipe's room is counted in pages, not bytes: batches left unread in it can fill
        it well before their sum reaches its size, and a supervisor that stopped reading
        -- stopped by a signal, say -- would then hold up the pass)."""
        now = time.monotonic()
        with self._lock:
            for i, entry in enumerate(self._open):
                stdin = entry.proc.stdin
                assert stdin is not None
                if (
                    entry.proc.pid not in avoid
                    and entry.given + count <= OPEN_SHARDS
                    and now - entry.since < OPEN_SECONDS
                    and entry.proc.poll() is None
                    and unread(stdin.fileno()) == 0
                ):
                    return self._open.pop(i)
        return None

    def _write(self, batch: bytes, proc: Proc) -> None:
        """In a thread: the blocking write, for a batch bigger than the pipe can be made;
        that supervisor takes no more batches after it."""
        assert proc.stdin is not None
        try:
            write_all(proc.stdin.fileno(), batch)
        except BrokenPipeError:  # a spare that died: its attempts go to a new supervisor
            proc.stdin.close()
            self._hand(batch, OPEN_SHARDS)  # (count: never to an open one)
            return
        proc.stdin.close()

    def tend(self) -> None:
        """Close the stdin of open supervisors past OPEN_SECONDS, reap supervisors that
        finished; start the spares that are missing, once this host has launched
        anything and no batch started in the last moments."""
        now = time.monotonic()
        with self._lock:
            done = [o for o in self._open if now - o.since >= OPEN_SECONDS]
            self._open = [o for o in self._open if now - o.since < OPEN_SECONDS]
        for entry in done:
            assert entry.proc.stdin is not None
            entry.proc.stdin.close()
        with self._lock:
            ended = [p for p in self._running if p.poll() is not None]
            self._running = [p for p in self._running if p.returncode is None]
        for proc in ended:  # a supervisor only ever exits 0 (a traceback says why not)
            if proc.returncode:
                why = f"signal {-proc.returncode}" if proc.returncode < 0 else proc.returncode
                log.warning(
                    "shard supervisor %d ended with %s: the attempts it had not finished are"
                    " recorded lost and retried (state/supervisors.log may say why)",
                    proc.pid,
                    why,
                )
        since = time.monotonic() - self._last_batch
        if since == float("inf") or since < SPARE_DELAY_SECONDS:
            return
        with self._lock:
            self._spares = [p for p in self._spares if p.poll() is None]
            missing = (os.cpu_count() or 1) - len(self._spares)
        for _ in range(missing):
            spare = self._spawn()
            with self._lock:
                self._spares.append(spare)

    def close(self) -> None:
        """Let the spares go (stdin closed with no batch: they exit) and close the open
        supervisors' stdin. Supervisors with a batch keep running: their shards outlive
        the control plane."""
        with self._lock:
            spares, self._spares = self._spares, []
            opened, self._open = self._open, []
        for entry in opened:
            assert entry.proc.stdin is not None
            entry.proc.stdin.close()
        for spare in spares:
            assert spare.stdin is not None
            spare.stdin.close()
        for spare in spares:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spare.wait(timeout=2)

    def _spawn(self) -> Proc:
        """A supervisor that waits for its batch on stdin. What it says on stderr (a
        traceback, or a note of input it dropped: nothing else) goes to
        ``supervisors.log`` beside the FIFO, so a supervisor that died leaves why."""
        with open(self._fifo.parent / "supervisors.log", "ab") as errors:
            return subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOT, HERE, str(self._fifo)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
                close_fds=True,
            )

    def _take_spare(self) -> Proc | None:
        with self._lock:
            while self._spares:
                proc = self._spares.pop()
                if proc.poll() is None:
                    return proc
        return None
