"""Room on the image cache's disk: what an image may take of it, and a watch while it does.

The cache shares its filesystem with the host (the home: logs, volumes, the store). An
image is unpacked only when what it unpacks to (:mod:`.layers`) leaves the filesystem its
reserve: :func:`reserve`, 5% of it (at least 1 GiB, at most a tenth of a small one), as
kubelet keeps ``imagefs.available``. And every tool that writes into the cache (a pull by
skopeo, ``umoci unpack``) runs watched (:func:`watch`): it is killed as soon as the free
space falls under the reserve, whatever it was asked to write -- the backstop for a tar
header read one way by :mod:`.layers` and another by umoci, or a registry that sends more
than its manifest says. The error is :class:`StorageFull` (503): the host is short, not
the request wrong, and nothing of it is kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from sylphx._core.errors import StorageFull

__all__ = ["Watch", "check_room", "reserve", "run_watched", "watch"]

RESERVE_FRACTION = 0.05
RESERVE_MIN = 1 << 30
_PERIOD = 0.25  # seconds between two looks at the free space

Watch = Callable[[], "StorageFull | None"]  # None: room enough, go on


def reserve(path: Path) -> int:
    """Bytes the cache leaves free on ``path``'s filesystem (see the module)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return max(int(total * RESERVE_FRACTION), min(RESERVE_MIN, total // 10))


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _full(path: Path, what: str, free: int, need: int = 0) -> StorageFull:
    asked = f"; it needs {need >> 20} MiB more" if need else ""
    return StorageFull(
        f"no room in the image cache for {what}: {free >> 20} MiB free, and"
        f" {reserve(path) >> 20} MiB are kept free for the host{asked}. Fix: retry once an"
        " operator has freed disk space where SYLPHX_HOME/images is"
    )


def check_room(path: Path, need: int, what: str) -> None:
    """StorageFull unless ``need`` bytes fit on ``path``'s filesystem above its reserve."""
    free = _free(path)
    if free - need < reserve(path):
        raise _full(path, what, free, need)


def watch(path: Path, what: str) -> Watch:
    """A look at ``path``'s free space: StorageFull once it is under the reserve."""
    floor = reserve(path)

    def look() -> StorageFull | None:
        free = _free(path)
        return _full(path, what, free) if free < floor else None

    return look


def run_watched(
    argv: Sequence[str], timeout: float, look: Watch, **popen: object
) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(argv, capture_output=True, timeout=...)``, its process group killed
    and ``look``'s error raised as soon as ``look`` finds no room."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen,  # type: ignore[call-overload]
    )
    try:
        out, err = communicate(proc, timeout, look)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def communicate(proc: subprocess.Popen[bytes], timeout: float, look: Watch) -> tuple[bytes, bytes]:
    """``proc.communicate(timeout=timeout)``, looking for room every :data:`_PERIOD` s:
    ``look``'s error raised once there is none (the caller kills ``proc``)."""
    waited = 0.0
    while True:
        step = min(_PERIOD, timeout - waited)
        try:
            return proc.communicate(timeout=step)
        except subprocess.TimeoutExpired:
            waited += step
            if waited >= timeout:
                raise subprocess.TimeoutExpired(proc.args, timeout) from None
        full = look()
        if full is not None:
            raise full
