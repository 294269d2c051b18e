"""Image garbage collection: the least recently used images no run needs make room.

Bounding each image (:mod:`.layers`) and keeping a reserve (:mod:`.room`) protect the
host, but without eviction a cache filled by many images -- a tenant's distinct layouts,
or months of ordinary use -- refused every org's next image (503) until an operator
cleaned up by hand. As kubelet's image GC does: when the cache's filesystem is more than
:data:`HIGH` used, or an image about to be unpacked does not fit above the reserve,
unpacked images are removed least recently used first, until it is at :data:`LOW` (or the
image fits). Never removed: a digest a run that has not ended pins (``in_use``: queued
runs, running shards, retries), one used within :data:`GRACE` (an admission that has
resolved its image but not yet stored its run; a launch between its look-up and its
sandbox's bind), and one whose lock another process holds (being unpacked).

Each digest's last use is its ``image.json``'s mtime, touched by the store when it serves
it (at most once a minute). A digest is removed under its lock: renamed out of
``sha256/`` first (a look-up then misses, and unpacks it again), then deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path

from .room import reserve

__all__ = ["GRACE", "HIGH", "LOW", "InUse", "evict", "touch"]

log = logging.getLogger("sylphx.images")

HIGH = 0.85  # of the filesystem used: collect
LOW = 0.80  # collect down to this
GRACE = 600.0  # seconds: an image used this recently is kept whatever else
_TOUCH_EVERY = 60.0

InUse = Callable[[], Collection[str]]  # the digests runs that have not ended pin


def touch(final: Path) -> None:
    """Record a use of the unpacked image at ``final`` (its ``image.json``'s mtime)."""
    meta = final / "image.json"
    with contextlib.suppress(OSError):
        if time.time() - meta.stat().st_mtime > _TOUCH_EVERY:
            os.utime(meta)


def _disk(cache_dir: Path) -> tuple[int, int]:
    """The size of the cache's filesystem and what of it is free, bytes."""
    st = os.statvfs(cache_dir)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _candidates(cache_dir: Path, keep: Collection[str]) -> list[tuple[float, str, Path]]:
    """Unpacked images not kept, least recently used first."""
    found = []
    for folder in (cache_dir / "sha256").glob("*"):
        digest = f"sha256:{folder.name}"
        try:
            used = (folder / "image.json").stat().st_mtime
        except OSError:
            continue  # not complete: never renamed into place
        if digest not in keep and time.time() - used > GRACE:
            found.append((used, digest, folder))
    return sorted(found)


def _remove(cache_dir: Path, digest: str, folder: Path) -> bool:
    """Remove one image under its lock; False when another process holds the lock."""
    lock = cache_dir / "locks" / f"{digest.replace(':', '-')}.lock"
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:  # used since it was listed: keep it
            if time.time() - (folder / "image.json").stat().st_mtime <= GRACE:
                return False
        except OSError:
            return False
        gone = Path(tempfile.mkdtemp(prefix="evicted.", dir=cache_dir / "tmp"))
        os.rename(folder, gone / "image")
    shutil.rmtree(gone, ignore_errors=True)
    return True


def evict(cache_dir: Path, need: int, in_use: InUse | None) -> int:
    """Make room for ``need`` bytes as the module says; how many images were removed.
    Without ``in_use`` (a node that cannot know what runs pin) nothing is removed."""
    total, free = _disk(cache_dir)
    kept = reserve(cache_dir)
    if in_use is None or (free >= total * (1 - HIGH) and free - need >= kept):
        return 0
    (cache_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    target, removed = max(int(total * (1 - LOW)), kept + need), 0  # LOW, or room for need
    for _, digest, folder in _candidates(cache_dir, set(in_use())):
        if _disk(cache_dir)[1] >= target:
            break
        if _remove(cache_dir, digest, folder):
            removed += 1
            log.info("image cache: removed %s, unused for a while, to make room", digest)
    return removed
