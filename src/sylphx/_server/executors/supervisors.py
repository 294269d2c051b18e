"""The supervisor processes of the local executor: one per batch, and spares kept ready.

A pass's launches become one batch, split over up to one supervisor (:mod:`.supervise`)
per CPU. A supervisor is a fresh Python interpreter, and starting one is most of the
way from a pass to its first shard, so once this host has launched anything, a spare per
CPU is kept started and idle (blocked reading its stdin). A batch goes to a spare when
there is one: it gets the batch file's path on stdin and starts at once. Spares are
started again only a while after the last batch, so they never compete with one for
the CPU; when the control plane goes away their stdin closes and they exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .supervise import write_atomic

SUPERVISOR = str(Path(__file__).with_name("supervise.py"))
SHARDS_PER_SUPERVISOR = 64  # a bigger batch is split over up to one supervisor per CPU
SPARE_DELAY_SECONDS = 0.3  # spare supervisors are started this long after a batch


class Supervisors:
    """Starts batches of attempt requests under supervisors that report on ``fifo``."""

    def __init__(self, fifo: Path, batches: Path) -> None:
        self._fifo = fifo
        self._batches = batches
        batches.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._running: list[subprocess.Popen[bytes]] = []
        self._spares: list[subprocess.Popen[bytes]] = []  # idle, waiting for a batch
        self._last_batch = float("-inf")  # monotonic time the last batch was started

    def start(self, requests: list[dict[str, object]]) -> None:
        """Start ``requests`` (the supervisor's JSON request bodies) as one batch."""
        parts = min(os.cpu_count() or 1, -(-len(requests) // SHARDS_PER_SUPERVISOR))
        size = -(-len(requests) // parts)
        for first in range(0, len(requests), size):
            path = self._batches / f"{os.getpid()}-{time.monotonic_ns()}-{first}.json"
            write_atomic(str(path), json.dumps(requests[first : first + size]))
            proc = self._take_spare()
            if proc is not None:
                assert proc.stdin is not None
                try:
                    proc.stdin.write(f"{path}\n".encode())  # it starts the batch at once
                    proc.stdin.close()
                except OSError:  # the spare died since it was checked: start a fresh one
                    proc = None
            if proc is None:
                proc = self._spawn(str(path))
            with self._lock:
                self._running.append(proc)
        self._last_batch = time.monotonic()

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
            spare = self._spawn("-")
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

    def _spawn(self, batch: str) -> subprocess.Popen[bytes]:
        """A supervisor of the batch file ``batch``, or (``-``) a spare."""
        return subprocess.Popen(
            [sys.executable, "-I", "-S", SUPERVISOR, str(self._fifo), batch],
            stdin=subprocess.PIPE if batch == "-" else subprocess.DEVNULL,
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
