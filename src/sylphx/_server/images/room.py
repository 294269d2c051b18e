"""Room on the image cache's disk: what an image may take of it, and a watch while it does.

The cache shares its filesystem with the host (the home: logs, volumes, the store). An
image is unpacked only when what it unpacks to (:mod:`.layers`) leaves the filesystem its
reserves: :func:`reserve`, 5% of it (at least 1 GiB, at most a tenth of a small one), as
kubelet keeps ``imagefs.available``, and 5% of its inodes (``imagefs.inodesFree``: a layer
of 0.4 MiB held 64,000 empty files, found by a review). And every tool that writes into
the cache (a pull by skopeo, ``umoci unpack``) runs watched (:func:`watch`): it is killed
as soon as the filesystem falls under a reserve, whatever it was asked to write -- the
backstop for what :mod:`.layers` misjudged, or a registry that sends more than its
manifest says. The error is :class:`StorageFull` (503): the host is short, not the request
wrong, and nothing of it is kept.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sylphx._core.errors import StorageFull

__all__ = [
    "Watch",
    "check_room",
    "communicate",
    "reap",
    "remove_tree",
    "reserve",
    "reserve_inodes",
    "run_watched",
    "watch",
]

RESERVE_FRACTION = 0.05
RESERVE_MIN = 1 << 30
_PERIOD = 0.25  # seconds between two looks at the free space

Watch = Callable[[], "StorageFull | None"]  # None: room enough, go on


def reserve(path: Path) -> int:
    """Bytes the cache leaves free on ``path``'s filesystem (see the module)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return max(int(total * RESERVE_FRACTION), min(RESERVE_MIN, total // 10))


def reserve_inodes(path: Path) -> int:
    """Inodes the cache leaves free (0 where the filesystem has no fixed number: btrfs)."""
    return int(os.statvfs(path).f_files * RESERVE_FRACTION)


def _free(path: Path) -> tuple[int, int]:
    """Free bytes and free inodes on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_favail


def _short(path: Path, what: str, need: int, inodes: int) -> StorageFull | None:
    """StorageFull when ``need`` bytes and ``inodes`` files would leave less than the
    reserves free."""
    (free, free_inodes), kept = _free(path), reserve(path)
    asked = f"; it needs {need >> 20} MiB more" if need else ""
    if free - need < kept:
        return StorageFull(
            f"no room in the image cache for {what}: {free >> 20} MiB free, and"
            f" {kept >> 20} MiB are kept free for the host{asked}. Fix: retry once an"
            " operator has freed disk space where SYLPHX_HOME/images is"
        )
    kept_inodes = reserve_inodes(path)
    if kept_inodes and free_inodes - inodes < kept_inodes:
        return StorageFull(
            f"no room in the image cache for {what}: {free_inodes:,} inodes free, and"
            f" {kept_inodes:,} are kept free for the host (it holds {inodes:,} files)."
            " Fix: retry once an operator has freed inodes where SYLPHX_HOME/images is"
        )
    return None


def check_room(path: Path, need: int, what: str, inodes: int = 0) -> None:
    """StorageFull unless ``need`` bytes and ``inodes`` files fit on ``path``'s
    filesystem above its reserves."""
    full = _short(path, what, need, inodes)
    if full is not None:
        raise full


def watch(path: Path, what: str) -> Watch:
    """A look at ``path``'s free space and inodes: StorageFull once under a reserve."""
    return lambda: _short(path, what, 0, 0)


def run_watched(
    argv: Sequence[str], timeout: float, look: Watch
) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(argv, capture_output=True, timeout=...)``, killed and ``look``'s
    error raised as soon as ``look`` finds no room, its output bounded as
    :func:`communicate` says. It stays in the caller's process group, as
    ``subprocess.run`` does: a control plane killed with its group takes its umoci along
    (in a session of its own, one went on writing into the cache)."""
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = communicate(proc, timeout, look)
    finally:
        if proc.poll() is None:
            proc.kill()
        reap(proc)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


MAX_STDOUT = 4 << 20  # a manifest or an index (refs.MAX_JSON): what a caller reads of one
_STDERR_TAIL = 64 << 10  # what is said of a failure is its last line


def communicate(proc: subprocess.Popen[bytes], timeout: float, look: Watch) -> tuple[bytes, bytes]:
    """``proc.communicate(timeout=timeout)``, looking for room every :data:`_PERIOD` s
    (``look``'s error raised once there is none: the caller kills ``proc``), and holding
    no more of its output than a caller reads: its stdout's first ``MAX_STDOUT + 1``
    bytes (more says it was too long), its stderr's last ``_STDERR_TAIL``; the rest is
    read and dropped. A skopeo exploited by a registry's answer could otherwise print
    until the control plane, every tenant's, ran out of memory (found by a review). It
    is watched until it exits, its pipes closed or not; once it has, its pipes are read
    for :data:`_LINGER` s more at most (a child it left may hold them)."""
    deadline = time.monotonic() + timeout
    kept: dict[int, bytearray] = {}
    ended: float | None = None  # when it was first seen exited
    with selectors.DefaultSelector() as streams:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                streams.register(stream.fileno(), selectors.EVENT_READ)
                kept[stream.fileno()] = bytearray()
        out = proc.stdout.fileno() if proc.stdout is not None else -1
        next_look = time.monotonic() + _PERIOD
        while streams.get_map():
            now = time.monotonic()
            if ended is None and proc.poll() is not None:
                ended = now
            if now >= deadline or (ended is not None and now - ended >= _LINGER):
                break  # (exited, and what it started holds its pipes: not waited on)
            for key, _ in streams.select(min(deadline, next_look, now + _PERIOD) - now):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    streams.unregister(key.fd)
                    continue
                buf = kept[key.fd]
                if key.fd == out:
                    buf += data[: MAX_STDOUT + 1 - len(buf)]
                else:
                    buf += data
                    del buf[:-_STDERR_TAIL]
            next_look = _look(look, next_look)
    while proc.poll() is None:  # its pipes closed, it may still write: watched as before
        if time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(min(_PERIOD, max(deadline - time.monotonic(), 0.0)))
        next_look = _look(look, next_look)
    err = proc.stderr.fileno() if proc.stderr is not None else -1
    return bytes(kept.get(out, b"")), bytes(kept.get(err, b""))


_LINGER = 1.0  # seconds its pipes are read after it exited


def _look(look: Watch, due: float) -> float:
    """Call ``look`` if it is ``due`` (raising its error); when the next look is due."""
    if time.monotonic() < due:
        return due
    full = look()
    if full is not None:
        raise full
    return time.monotonic() + _PERIOD


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Close ``proc``'s pipes and wait for it (killed already, or ended): never reading
    on, since what it started may still hold them open and write."""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.wait()


def remove_tree(path: Path) -> None:
    """Remove ``path`` and all it holds, whatever its shape: what a registry's skopeo or an
    image's layers made may nest folders deeper than Python's recursion (shutil.rmtree
    raised RecursionError at ~1,000 levels in Python 3.11, found by a review) or than
    PATH_MAX. coreutils' ``rm`` walks any depth and never follows a link; it crosses into
    a filesystem made inside the tree (a btrfs subvolume the skopeo created: with
    ``--one-file-system`` it would stay, and fill the disk for good). What it cannot
    remove stays, as with ``ignore_errors``."""
    if not os.path.lexists(path):
        return
    rm = shutil.which("rm", path=os.defpath)  # (not the server's PATH: any PATH)
    if rm is None:  # no coreutils: as well as Python can
        shutil.rmtree(path, ignore_errors=True)
        return
    argv = [rm, "-rf", "--", str(path)]
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
