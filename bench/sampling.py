"""Memory and CPU of a process over a phase of a benchmark.

``Phase`` resets the kernel's peak-RSS mark of the process (``/proc/PID/clear_refs``) when
it starts and reads it back when it ends, so the peak is exact, not sampled; a thread also
samples VmRSS every ``interval`` seconds (the time series' max is printed beside it as a
check, and is what is left when the reset is not permitted).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

MB = 1e6


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (VmRSS, VmHWM, ...) in KiB, 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Phase:
    """RSS before, at the end, exact peak and sampled peak (bytes), and CPU seconds of one
    process over a ``with`` block."""

    def __init__(self, pid: int, *, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.before = self.after = self.peak = self.sampled_peak = 0
        self.cpu = self.wall = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Phase:
        self.before = status_kib(self.pid, "VmRSS") * 1024
        with contextlib.suppress(OSError):  # "5": reset the peak RSS (VmHWM) to the current
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._cpu0 = cpu_seconds(self.pid)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self._t0
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        self.after = status_kib(self.pid, "VmRSS") * 1024
        self.peak = max(status_kib(self.pid, "VmHWM") * 1024, self.sampled_peak, self.after)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled_peak = max(self.sampled_peak, status_kib(self.pid, "VmRSS") * 1024)
            self._stop.wait(self.interval)

    def growth_mb(self) -> float:
        """Peak over the starting RSS, in MB."""
        return (self.peak - self.before) / MB
