"""Daemonless container images for the local executor: a reference in, a rootfs out.

``ImageStore.resolve(ref)`` turns an OCI layout, an OCI archive, a ``docker save`` tarball
or a registry reference into an unpacked root filesystem plus the image's config
(Env, WorkingDir, Entrypoint, Cmd). ``skopeo`` converts archives and registry images to an
OCI layout; ``umoci unpack`` unpacks it. No daemon is involved.

Cache: ``cache_dir/sha256/<hex>/`` holds ``rootfs/`` and ``image.json``, keyed by the
manifest digest. A digest is unpacked under ``flock`` on ``cache_dir/locks/<hex>.lock``
into ``cache_dir/tmp/`` and renamed into place at the end, so the final directory exists
only when complete; leftovers of a crashed unpack are removed by the next holder of the lock.

The cache is shared by every tenant, so a digest is served from it only when the source the
reference names vouches for it: a local layout must hold the manifest blob its index names
(hashed), and a registry reference pinned by digest (``repo@sha256:D``) is checked once with
that registry (``cache_dir/sources`` holds a file per digest and repository that did; a
pull from one counts). Without that, knowing the digest of an image another tenant pulled
was enough to run it, past an org's allowed sources (Kubernetes' AlwaysPullImages closes
the same hole).

A run's images are pinned at admission: ``resolve(ref, digest=D)`` with the digest found
then serves that image, and never what the reference names by launch time (a moved tag, a
rewritten layout: an image the policy and the scanner never saw).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from sylphx._core.errors import ExecutorError

from .archive import measure_archive
from .config import ImageConfig
from .eviction import Holds, InUse, evict, lock_path, touch
from .layers import MAX_UNPACKED_BYTES, measure
from .pull import manifest_of, pull, tag_digest
from .reach import check_reachable, host_of
from .reader import reading_as
from .refs import (
    DIGEST,
    Layout,
    Source,
    check_tar,
    image_error,
    parse_ref,
    repository_of,
    skopeo_error,
)
from .room import Watch, check_room, remove_tree, run_watched, watch
from .snapshot import archive_digest, copy_archive, copy_image, vouch
from .sources import Sources

__all__ = ["Confine", "ImageConfig", "ImageStore", "UnpackedImage"]


class Confine(Protocol):
    """Runs argv with the folders it writes, within a timeout, killed once ``look`` finds
    the disk short, where it reaches public addresses only
    (executors.envelope.egress.run_confined; the store is below the executors)."""

    def __call__(
        self, argv: Sequence[str], writable: Sequence[Path], timeout: float, *, look: Watch
    ) -> subprocess.CompletedProcess[bytes]: ...


# Mount points a sandbox binds over a read-only rootfs; created when the image lacks them.
_MOUNT_POINTS = ("proc", "dev", "sys", "tmp")
_PACKAGES = {"skopeo": "skopeo", "umoci": "umoci"}
_UNPACKS = threading.BoundedSemaphore(2)  # umoci keeps ~3 KiB a file in memory: 1.5 GiB each


@dataclass(frozen=True)
class UnpackedImage:
    """An image ready to run: its rootfs (use read-only) and its config."""

    ref: str  # as the user wrote it
    digest: str  # manifest digest, "sha256:…"
    rootfs: Path
    config: ImageConfig


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ExecutorError(
            f"container images need `{name}` on the executor host and it is not installed."
            f" Fix: install the Debian package '{_PACKAGES[name]}' (make system-deps)"
        )
    return path


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"


class ImageStore:
    """Resolves image references to unpacked rootfs directories in a shared cache."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        registry_timeout: float = 60.0,
        pull_timeout: float = 1800.0,
        private_registries: Collection[str] = (),
        reader: tuple[int, int] | None = None,
        confine: Confine | None = None,
        max_unpacked: int = MAX_UNPACKED_BYTES,
        in_use: InUse | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.registry_timeout = registry_timeout  # metadata look-ups (a dead network)
        self.pull_timeout = pull_timeout  # copying a whole image (big layers)
        self.private_registries = private_registries  # contacted although private (.reach)
        self.reader = reader  # (uid, gid) a tenant's files are opened as (see .reader)
        self.confine = confine  # runs a registry's skopeo off the host's network
        self.max_unpacked = max_unpacked  # an image's files, unpacked (see .layers)
        self.in_use = in_use  # the digests runs pin (.eviction); None: never evict
        self.holds = Holds()  # the digests this process's admissions and retries need
        self.sources = Sources(self.cache_dir / "sources")  # who vouched for a digest

    # -- public --------------------------------------------------------------------------

    def digest(self, ref: str) -> str:
        """The manifest digest of ``ref`` without unpacking anything."""
        with reading_as(self.reader):
            return self._digest(parse_ref(ref), ref)

    def resolve(
        self, ref: str, digest: str | None = None, *, cached_only: bool = False
    ) -> UnpackedImage:
        """Unpack ``ref`` once (idempotent, process-safe, atomic) and return it.

        ``digest``: the one admission found for a run's image (see the module): that
        image is served, from the cache, or pulled from the registry by that digest, or
        copied from the layout's blobs of that digest, never what its tag names by now.
        An admitted digest already cached is served without a look at ``ref``: a launch
        never reads a tenant's file while the reconciler holds the store.

        ``cached_only``: a launch on this host, inside the reconciler's pass, never unpacks
        (every org's passes would wait): an admitted digest gone from the cache is an
        ExecutorError (a run that has not ended pins its images, so only another
        process's collection or an operator can have removed it)."""
        if digest is not None and DIGEST.match(digest):
            cached = self._load(self.path_for(digest), ref, digest)
            if cached is not None:
                return cached
        if cached_only:  # (a run stored before digests were kept has none: never unpacked)
            fix = "retry the run (it is unpacked again then)" if digest else "submit it again"
            raise ExecutorError(
                f"the image {ref!r} ({digest}) is not in this host's image cache. Fix: {fix}"
            )
        with reading_as(self.reader):
            return self._resolve(ref, digest)

    def _resolve(self, ref: str, digest: str | None) -> UnpackedImage:
        source = parse_ref(ref)
        if digest is None:
            digest = self._digest(source, ref)
            vouched = source.kind != "docker" or "@" not in source.location
        else:
            if not DIGEST.match(digest):
                raise ExecutorError(f"the admitted digest {digest[:80]!r} is malformed")
            vouched = True  # found at admission, by this code, from this reference
            if source.kind == "docker":  # pulled by the admitted digest, whatever the tag is now
                source = Source("docker", f"{repository_of(source.location)}@{digest}")
        final = self.path_for(digest)
        cached = self._load(final, ref, digest)
        if cached is not None:
            if not vouched:
                self._confirm(source, ref, digest)
            return cached
        if source.kind == "docker":
            check_reachable(source.registry, self.private_registries)  # before a pull
        with self._locked(digest):
            if self._load(final, ref, digest) is None:
                self._unpack(source, ref, digest, final)
                if source.kind == "docker":  # its manifest was checked by digest
                    self.sources.record(repository_of(source.location), digest)
            elif not vouched:  # another process unpacked it meanwhile, from elsewhere
                self._confirm(source, ref, digest)
        loaded = self._load(final, ref, digest)
        assert loaded is not None
        return loaded

    def cached(self, digest: str) -> bool:
        """Whether ``digest`` is unpacked here (a use of it: see .eviction)."""
        return (
            DIGEST.match(digest) is not None
            and self._load(self.path_for(digest), "", digest) is not None
        )

    def path_for(self, digest: str) -> Path:
        """The cache directory of a digest (``cache_dir/sha256/<hex>``)."""
        algo, _, hexpart = digest.partition(":")
        return self.cache_dir / algo / hexpart

    # -- digests -------------------------------------------------------------------------

    def _digest(self, source: Source, ref: str) -> str:
        if source.kind in ("oci", "oci-archive"):
            layout = Layout(source)
            try:
                digest = str(layout.entry()["digest"])
                vouch(layout, digest)  # the layout's word is not enough (see the module)
            except (TypeError, AttributeError, KeyError):  # JSON of another shape
                raise image_error(
                    f"the OCI layout at {source.location} is not shaped as OCI says",
                    "layout_broken",
                    "give a valid OCI layout (skopeo copy or umoci write one)",
                ) from None
            return digest
        if source.kind == "docker-archive":  # skopeo's digest of one is forgeable
            check_tar(Path(source.location))  # uncompressed: skopeo would inflate it
            return archive_digest(source.location, source.tag)
        check_reachable(source.registry, self.private_registries)  # before any pull too
        pinned = source.location.rpartition("@")[2] if "@" in source.location else None
        if pinned is not None:
            if not DIGEST.match(pinned):
                raise image_error(
                    f"{ref!r} has a malformed digest",
                    "format",
                    "pin with @sha256:<64 hex digits>, or use a tag",
                )
            return pinned
        return tag_digest(self._registry, source, ref, self.registry_timeout)

    def _skopeo(
        self,
        args: list[str],
        timeout: float,
        ref: str,
        registry: str | None = None,
        *,
        writes: Path | None = None,
    ) -> bytes:
        """Run skopeo (for a ``registry``: confined, see ``confine``, ``writes`` the folder
        it writes); failures become ValidationError on ``image`` naming the registry."""
        argv = [_tool("skopeo"), *args]
        trusted = registry in self.private_registries or (
            registry is not None and host_of(registry) in self.private_registries
        )
        look: Watch = watch(self.cache_dir, repr(ref)) if writes else lambda: None
        try:
            if registry is not None and self.confine is not None and not trusted:
                done = self.confine(argv, [writes] if writes else [], timeout, look=look)
            else:
                done = run_watched(argv, timeout, look)
        except subprocess.TimeoutExpired:
            why, detail = "timed out", f"no answer within {timeout:.0f}s"
        else:
            if done.returncode == 0:
                return bytes(done.stdout)
            detail = _last_line(done.stderr.decode(errors="replace"))
            detail = detail.replace(str(self.cache_dir), "<image cache>")  # (its work folder)
            why = "failed"
        raise skopeo_error(ref, registry, why, detail)

    # -- vouching for a cached digest ----------------------------------------------------

    def _confirm(self, source: Source, ref: str, digest: str) -> None:
        """Check that the registry ``source`` names holds ``digest`` (asked once per
        repository, then recorded): a ValidationError on ``image`` when it does not."""
        repository = repository_of(source.location)
        if self.sources.vouched(repository, digest):
            return
        registry, timeout = source.registry, self.registry_timeout
        manifest_of(self._registry, repository, digest, ref, registry, timeout)
        self.sources.record(repository, digest)

    def _registry(
        self, args: list[str], timeout: float, ref: str, registry: str, writes: Path | None
    ) -> bytes:
        return self._skopeo(args, timeout, ref, registry, writes=writes)

    # -- unpacking -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.cache_dir.stat().st_mode & 0o077:  # what it holds is root's alone: a
            os.chmod(self.cache_dir, 0o700)  # node's cache listed every tenant's digests
        (self.cache_dir / "locks").mkdir(parents=True, exist_ok=True)
        with open(lock_path(self.cache_dir, digest), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
            yield

    def _unpack(self, source: Source, ref: str, digest: str, final: Path) -> None:
        """Under the digest's lock: unpack into a temp dir, then rename it to ``final``."""
        tmp_root = self.cache_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        prefix = digest.replace(":", "-") + "."
        for stale in tmp_root.glob(prefix + "*"):  # a crashed unpack of this digest
            remove_tree(stale)
        evict(self.cache_dir, 0, self.in_use, self.holds)  # the filesystem is HIGH used
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))
        try:
            layout, tag = self._as_layout(source, ref, digest, work)
            with reading_as(None):  # our own copy, in the cache: root's to read
                ours = Layout(Source("oci", str(layout), tag))
                manifest = ours.manifest()
                config = ImageConfig.from_oci(ours.config_blob())
                blobs = layout / "blobs"
                layers = [
                    (blobs / ours.digest(d.get("digest")).replace(":", "/", 1), d.get("mediaType"))
                    for d in manifest.get("layers") or []
                ]
            unpacked = measure(layers, repr(ref), self.max_unpacked)  # a bomb stops here
            evict(self.cache_dir, unpacked.bytes, self.in_use, self.holds, unpacked.entries)
            check_room(self.cache_dir, unpacked.bytes, repr(ref), unpacked.entries)
            bundle = work / "bundle"
            self._umoci(layout, tag, bundle, repr(ref))
            rootfs = bundle / "rootfs"
            for name in _MOUNT_POINTS:
                if not os.path.lexists(rootfs / name):
                    (rootfs / name).mkdir(mode=0o755)
            meta = {"digest": digest, "config": asdict(config), "bytes": unpacked.bytes}
            with open(bundle / "image.json", "w") as fh:
                json.dump(meta, fh)
                fh.flush()
                os.fsync(fh.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(bundle, final)
        finally:
            remove_tree(work)

    def _as_layout(self, source: Source, ref: str, digest: str, work: Path) -> tuple[Path, str]:
        """A layout in ``work`` holding the image ``digest`` names, and its tag: never the
        tenant's files themselves (see :mod:`.snapshot`); a registry's skopeo writes only
        ``work/pull``, so nothing else in ``work`` (umoci's bundle) is of its making."""
        dest = work / "pull" / "layout"
        dest.parent.mkdir(mode=0o700)
        if source.kind in ("oci", "oci-archive"):
            return dest, copy_image(Layout(source), digest, dest)
        if source.kind == "docker":  # root checks what skopeo pulled (see .pull)
            timeouts = self.registry_timeout, self.pull_timeout
            repository, registry = repository_of(source.location), source.registry
            with reading_as(None):  # files of skopeo's user, in our work folder
                return pull(self._registry, repository, digest, ref, registry, timeouts, work)
        # a docker-archive: our own copy of the very archive the digest was made of
        mine = work / "archive.tar"
        copy_archive(source.location, source.tag, digest, mine)  # its bytes: checked
        measure_archive(mine, repr(ref), self.max_unpacked)  # before skopeo inflates
        src = Source("docker-archive", str(mine), source.tag).skopeo()
        copy = ["copy", "--quiet", src, f"oci:{dest}:image"]
        self._skopeo(copy, self.pull_timeout, ref, writes=dest.parent)
        return dest, "image"

    def _umoci(self, layout: Path, tag: str, bundle: Path, what: str) -> None:
        argv = [_tool("umoci"), "unpack"]
        if os.geteuid() != 0:
            argv.append("--rootless")
        argv += ["--image", f"{layout}:{tag}", str(bundle)]
        try:  # (what .layers misjudged, the disk's watch stops); its memory: see _UNPACKS
            with _UNPACKS:
                done = run_watched(argv, self.pull_timeout, watch(self.cache_dir, what))
        except subprocess.TimeoutExpired:
            raise ExecutorError(
                f"umoci took over {self.pull_timeout:.0f}s to unpack {what}"
                ". Fix: check the disk where SYLPHX_HOME/images is"
            ) from None
        if done.returncode != 0:
            raise ExecutorError(
                f"umoci could not unpack {what}:"
                f" {_last_line(done.stderr.decode(errors='replace'))}."
                " Fix: check free disk space and that the image layers are intact"
            )

    def _load(self, final: Path, ref: str, digest: str) -> UnpackedImage | None:
        try:
            meta = json.loads((final / "image.json").read_text())
        except (OSError, ValueError):
            return None
        touch(final)  # its last use (.eviction)
        if not (final / "rootfs").is_dir():  # removed meanwhile (.eviction renames it away)
            return None
        return UnpackedImage(ref, digest, final / "rootfs", ImageConfig(**meta["config"]))
