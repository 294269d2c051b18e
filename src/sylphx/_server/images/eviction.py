"""Image garbage collection: the least recently used images no run needs make room.

Bounding each image (:mod:`.layers`) and keeping a reserve (:mod:`.room`) protect the
host, but without eviction a cache filled by many images -- a tenant's distinct layouts,
or months of ordinary use -- refused every org's next image (503) until an operator
cleaned up by hand. As kubelet's image GC does: when the cache's filesystem is more than
:data:`HIGH` used, or an image about to be unpacked does not fit above the reserve,
unpacked images are removed least recently used first, until it is at :data:`LOW` (or the
image fits). Never removed: a digest a run that has not ended pins (``in_use``: queued
runs, running shards, retries), one this process holds (:class:`Holds`: an admission
from its look-up until its run is stored, a retry until its run is reopened), one used
within :data:`GRACE` (the same, in another API process), and one whose lock another
process holds (being unpacked, or run by a shard on this host: :func:`using`). Nothing
is removed when even all that may go would not
make the room asked for: an image that can never fit does not empty the cache (found by
a review). Leftovers of a removal or an unpack cut short by a crash go at the next
collection.

Each digest's last use is its ``image.json``'s mtime, touched by the store when it serves
it (at most once a minute). A digest is removed under its lock: renamed out of
``sha256/`` first (a look-up then misses, and unpacks it again), then deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from .room import remove_tree, reserve, reserve_inodes

__all__ = [
    "GRACE", "HIGH", "LOW", "Claim", "Holds", "InUse", "evict", "lock_path", "touch", "using"
]  # fmt: skip

log = logging.getLogger("sylphx.images")

HIGH = 0.85  # of the filesystem used: collect
LOW = 0.80  # collect down to this
GRACE = 600.0  # seconds: an image used this recently is kept whatever else
_TOUCH_EVERY = 60.0

InUse = Callable[[], Collection[str]]  # the digests runs that have not ended pin


class Holds:
    """Digests this process needs kept for a while (see the module), counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def hold(self, digests: Iterable[str]) -> None:
        with self._lock:
            self._held.update(digests)

    def release(self, digests: Iterable[str]) -> None:
        digests = list(digests)
        if not digests:  # every submit without an image lets go of nothing (P7)
            return
        with self._lock:
            self._held.subtract(digests)
            self._held = +self._held  # (drops the counts at zero)

    def __call__(self) -> set[str]:
        with self._lock:
            return set(self._held)


class Claim:
    """Digests held for a caller that may be gone before they are: a submit's checks run
    in a thread, which cancelling the submit does not stop (the cancel lands at once, the
    thread goes on). Whichever ends last -- the checks (:meth:`take`) or the caller
    (:meth:`close`) -- lets go of what the checks held."""

    def __init__(self, holds: Holds) -> None:
        self._holds = holds
        self._lock = threading.Lock()
        self._digests: dict[str, str] | None = None
        self._closed = False

    def take(self, check: Callable[[], dict[str, str] | None]) -> dict[str, str] | None:
        """Run ``check``, which holds the digests it returns (by image reference)."""
        digests = check()
        with self._lock:
            if not self._closed:
                self._digests = digests
                return digests
        self._holds.release((digests or {}).values())  # its caller is gone
        return digests

    def close(self) -> None:
        """The caller is done: let go of what was taken (what comes later is let go of
        as it comes)."""
        with self._lock:
            self._closed, digests, self._digests = True, self._digests, None
        self._holds.release((digests or {}).values())


def touch(final: Path) -> None:
    """Record a use of the unpacked image at ``final`` (its ``image.json``'s mtime)."""
    meta = final / "image.json"
    with contextlib.suppress(OSError):
        if time.time() - meta.stat().st_mtime > _TOUCH_EVERY:
            os.utime(meta)


@contextlib.contextmanager
def using(cache_dir: Path, digest: str) -> Iterator[None]:
    """Keep ``digest`` from collection while a shard on this host runs it: a shared lock
    on its lock file, which a collection must take exclusive (without waiting) to remove
    it. A Ray node's collection, which cannot ask the store what runs pin, relies on it."""
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    with open(lock_path(cache_dir, digest), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        yield


def _disk(cache_dir: Path) -> tuple[int, int]:
    """The size of the cache's filesystem and what of it is free, bytes."""
    st = os.statvfs(cache_dir)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _candidates(cache_dir: Path, keep: Collection[str]) -> list[tuple[float, str, Path, int]]:
    """Unpacked images not kept, least recently used first, with their sizes (-1 for an
    image unpacked before sizes were recorded)."""
    found = []
    for folder in (cache_dir / "sha256").glob("*"):
        digest = f"sha256:{folder.name}"
        try:
            used = (folder / "image.json").stat().st_mtime
            size = int(json.loads((folder / "image.json").read_text()).get("bytes", -1))
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # not complete: never renamed into place
        if digest not in keep and time.time() - used > GRACE:
            found.append((used, digest, folder, size))
    return sorted(found)


def lock_path(cache_dir: Path, digest: str) -> Path:
    """The file a digest's unpacks, removals and (on Ray nodes) shards lock."""
    return cache_dir / "locks" / f"{digest.replace(':', '-')}.lock"


def _leftovers(cache_dir: Path) -> None:
    """Remove what a crash left in ``tmp/``, each under its digest's lock: removals cut
    short (``evicted.sha256-<hex>.<random>``) and unpacks (``sha256-<hex>.<random>``)."""
    for path in (cache_dir / "tmp").glob("*"):
        name = path.name.removeprefix("evicted.")
        digest = name.partition(".")[0].replace("-", ":", 1)
        with open(lock_path(cache_dir, digest), "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being unpacked
            remove_tree(path)


def _wanted(folder: Path, digest: str, holds: Holds) -> bool:
    """Whether the image at ``folder`` was used within GRACE, or is held."""
    try:
        return time.time() - (folder / "image.json").stat().st_mtime <= GRACE or digest in holds()
    except OSError:
        return True  # (not there: nothing to remove)


def _remove(cache_dir: Path, digest: str, folder: Path, holds: Holds) -> bool:
    """Remove one image under its lock; False when another process holds the lock, or it
    was used or held since it was listed. Renamed away, looked at again -- a look-up may
    have touched it between the first look and the rename: then it is put back -- and
    only then deleted (a look-up that finds it gone unpacks it again, see ``_load``)."""
    with open(lock_path(cache_dir, digest), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if _wanted(folder, digest, holds):
            return False
        gone = cache_dir / "tmp" / f"evicted.{digest.replace(':', '-')}.{uuid.uuid4().hex}"
        os.rename(folder, gone)
        if _wanted(gone, digest, holds):
            os.rename(gone, folder)
            return False
    remove_tree(gone)
    return True


def _inodes_short(cache_dir: Path, need: int) -> bool:
    """Whether ``need`` more files would leave less than the inode reserve (.room)."""
    return os.statvfs(cache_dir).f_favail - need < reserve_inodes(cache_dir)


def evict(
    cache_dir: Path,
    need: int,
    in_use: InUse | None,
    holds: Holds | None = None,
    inodes: int = 0,
) -> int:
    """Make room for ``need`` bytes and ``inodes`` files as the module says; how many
    images were removed. Without ``in_use`` (a store made without one: tests, tools)
    nothing is removed; a Ray node passes an empty one (its shards lock theirs)."""
    total, free = _disk(cache_dir)
    kept = reserve(cache_dir)
    short = _inodes_short(cache_dir, inodes)
    if in_use is None or (free >= total * (1 - HIGH) and free - need >= kept and not short):
        return 0
    (cache_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    _leftovers(cache_dir)
    holds = holds or Holds()
    candidates = _candidates(cache_dir, set(in_use()) | holds())  # (its errors: the caller's)
    sizes = [size for *_, size in candidates]
    known = -1 not in sizes  # (sizes recorded for every candidate)
    reachable = _disk(cache_dir)[1] + sum(sizes)
    if known and reachable < kept + need:
        log.warning("image cache: short of room, and removing every unused image would not help")
        return 0  # (an image that can never fit empties nothing)
    low = int(total * (1 - LOW))  # (sizes unknown: only the room asked for)
    target = max(low, kept + need) if known and reachable >= low else kept + need
    removed = 0
    for _, digest, folder, _size in candidates:
        if _disk(cache_dir)[1] >= target and not _inodes_short(cache_dir, inodes):
            break
        if _remove(cache_dir, digest, folder, holds):
            removed += 1
            log.info("image cache: removed %s, unused for a while, to make room", digest)
    return removed
