"""The supervisor processes of the local executor: one per batch, and spares kept ready.

A pass's launches become one batch, split over up to one supervisor (:mod:`.supervise`)
per CPU. A supervisor is a fresh Python interpreter, and starting one is most of the
way from a pass to its first shard, so once this host has launched anything, a spare per
CPU is kept started and idle (blocked reading its stdin). A batch goes to a spare when
there is one, or else to a supervisor started for it; either way the batch itself (one
line of JSON) is written to the supervisor's stdin pipe, never to a file: it holds every
shard's environment, secrets included. The pipe is first enlarged to hold the whole
batch, so the write never waits for the supervisor to read (the reconciler's pass must
not); where it cannot be (an unprivileged control plane past the system's pipe size
limit) a thread writes it. Spares are started again only a while after the last batch,
so they never compete with one for the CPU; when the control plane goes away their stdin
closes and they exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = str(Path(__file__).parent)  # supervise.py and shardlog.py, imported from here
# supervise.py imported, not run as a script: from its cached bytecode (compiling it cost
# ~8 ms of every supervisor's start)
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); import supervise; supervise.run(sys.argv[2:])"
SHARDS_PER_SUPERVISOR = 64  # a bigger batch is split over up to one supervisor per CPU
SPARE_DELAY_SECONDS = 0.3  # spare supervisors are started this long after a batch
PIPE_BYTES = 1 << 16  # a pipe's default capacity


def fit_pipe(fd: int, size: int) -> bool:
    """Make the (empty) pipe ``fd`` hold ``size`` bytes; False when it cannot."""
    if size <= PIPE_BYTES:
        return True
    want = 1 << (size - 1).bit_length()  # the kernel rounds to a power of two anyway
    try:
        return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, want)) >= size
    except OSError:  # over /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE
        return False


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Supervisors:
    """Starts batches of attempt requests under supervisors that report on ``fifo``."""

    def __init__(self, fifo: Path) -> None:
        self._fifo = fifo
        self._lock = threading.Lock()
        self._running: list[subprocess.Popen[bytes]] = []
        self._spares: list[subprocess.Popen[bytes]] = []  # idle, waiting for a batch
        self._last_batch = float("-inf")  # monotonic time the last batch was started

    def start(self, requests: list[dict[str, object]]) -> list[tuple[dict[str, object], OSError]]:
        """Start ``requests`` (the supervisor's JSON request bodies) as one batch; the
        requests no supervisor could be started for (the host out of processes or
        memory), with why. Those of the other parts of the batch do start."""
        parts = min(os.cpu_count() or 1, -(-len(requests) // SHARDS_PER_SUPERVISOR))
        size = -(-len(requests) // parts)
        failed: list[tuple[dict[str, object], OSError]] = []
        for first in range(0, len(requests), size):
            part = requests[first : first + size]
            batch = json.dumps(part, separators=(",", ":"))
            try:
                self._hand(f"{batch}\n".encode(), self._take_spare())
            except OSError as exc:  # Popen: EAGAIN, ENOMEM, EMFILE...
                failed += [(request, exc) for request in part]
        self._last_batch = time.monotonic()
        return failed

    def _hand(self, batch: bytes, proc: subprocess.Popen[bytes] | None) -> None:
        """Give ``batch`` to ``proc`` (a spare) or, if it died, to a new supervisor."""
        while True:
            if proc is None:
                proc = self._spawn()
            stdin = proc.stdin
            assert stdin is not None
            if not fit_pipe(stdin.fileno(), len(batch)):  # the write would wait for the reader
                with self._lock:
                    self._running.append(proc)
                threading.Thread(target=self._write, args=(batch, proc), daemon=True).start()
                return
            try:
                write_all(stdin.fileno(), batch)  # into the pipe at once: it starts the batch
            except BrokenPipeError:  # the spare died since it was checked: a fresh one
                stdin.close()
                proc = None
                continue
            stdin.close()
            with self._lock:
                self._running.append(proc)
            return

    def _write(self, batch: bytes, proc: subprocess.Popen[bytes]) -> None:
        """In a thread: the blocking write, for a batch bigger than the pipe can be made."""
        assert proc.stdin is not None
        try:
            write_all(proc.stdin.fileno(), batch)
        except BrokenPipeError:  # a spare that died: its attempts go to a new supervisor
            proc.stdin.close()
            self._hand(batch, None)
            return
        proc.stdin.close()

    def tend(self) -> None:
        """Reap supervisors that finished; start the spares that are missing, once this
        host has launched anything and no batch started in the last moments."""
        with self._lock:
            self._running = [p for p in self._running if p.poll() is None]
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
        """Let the spares go (stdin closed with no batch: they exit). Supervisors with
        a batch keep running: their shards outlive the control plane."""
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            assert spare.stdin is not None
            spare.stdin.close()
        for spare in spares:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spare.wait(timeout=2)

    def _spawn(self) -> subprocess.Popen[bytes]:
        """A supervisor that waits for its batch on stdin."""
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", BOOT, HERE, str(self._fifo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    def _take_spare(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            while self._spares:
                proc = self._spares.pop()
                if proc.poll() is None:
                    return proc
        return None
