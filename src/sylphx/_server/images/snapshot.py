"""A private, verified copy of one image of a tenant's OCI layout or archive.

The image cache is shared and keyed by digest, so what is unpacked under a digest must be
that digest's image, whatever the tenant does meanwhile. The tenant's layout is theirs to
change at any moment: unpacked from it by tag, an index.json swapped between the look-up
of the digest and umoci's own read put another image in the cache under the first one's
digest -- a well-known digest, that other tenants then ran pinned (found by a review).

So an image is never unpacked from the tenant's files. :func:`copy_image` copies the blobs
that one digest reaches (the platform's manifest of an index, its config, its layers) into
a layout of our own, each read once and checked against its digest as it is copied, and
tags that manifest ``image``. A blob changed meanwhile fails the check; it is never
unpacked. Blobs are read as regular files only (opened as the shards' user, see
:mod:`.reader`), of exactly their descriptor's size, an image's together within
:data:`MAX_IMAGE_BYTES`, and only with room for them in the cache.

:func:`vouch` is the check without the copy: a layout must hold every blob of the image
it names for the cache to serve it that image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import IO, Any

from sylphx._core.errors import ValidationError

from .platforms import host_platform, host_text
from .reader import members, open_regular, open_tar
from .refs import (
    DIGEST,
    INDEX_TYPES,
    MANIFEST_TYPE,
    MAX_JSON,
    REF_NAME,
    Layout,
    Source,
    canonical_manifest,
    image_error,
)
from .room import check_room

__all__ = [
    "MAX_IMAGE_BYTES",
    "archive_digest",
    "assemble",
    "copy_archive",
    "copy_image",
    "vouch",
    "within_limit",
]

TAG = "image"
MAX_IMAGE_BYTES = 32 << 30  # an image's config and layers together (a copy is made of them)
_CHUNK = 1 << 20
_MAX_DEPTH = 4  # nested indexes


def _broken(layout: Layout, what: str) -> Exception:
    return image_error(
        f"the image at {layout.source.location} cannot be used: {what}",
        "layout_broken",
        "give an intact OCI layout or archive (skopeo copy or umoci write one)",
    )


def _descriptor(layout: Layout, value: Any) -> tuple[str, int]:
    """A descriptor's digest (checked, see refs.DIGEST) and size."""
    if not isinstance(value, dict):
        raise _broken(layout, "a descriptor is not a JSON object")
    digest, size = layout.digest(value.get("digest")), value.get("size")
    if not isinstance(size, int) or size < 0:
        raise _broken(layout, f"the descriptor of {digest} has no valid size")
    if not isinstance(value.get("mediaType", ""), str):
        raise _broken(layout, f"the descriptor of {digest} has a media type that is not text")
    return digest, size


def _stream(layout: Layout, src: IO[bytes], digest: str, size: int, dest: Path | None) -> None:
    """Copy ``size`` bytes of ``src`` to ``dest`` (None: only hash them); they must hash
    to ``digest``."""
    hasher, left = hashlib.sha256(), size
    with open(dest, "wb") if dest is not None else contextlib.nullcontext() as out:
        while left > 0:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                break
            hasher.update(chunk)
            if out is not None:
                out.write(chunk)
            left -= len(chunk)
    if left or src.read(1) or "sha256:" + hasher.hexdigest() != digest:
        if dest is not None:
            dest.unlink()
        raise _broken(layout, f"the blob {digest} does not match its digest and size")


# Blobs hashed already, by the file's identity: (device, inode, ctime, size[, offset in
# an archive]). A file's ctime changes with its contents and cannot be set by its owner,
# so a blob rewritten since is hashed again.
_VERIFIED: dict[tuple[int, ...], str] = {}
_VERIFIED_KEPT = 8192
_SPARSE_FROM = 1 << 20


def _identity(fd: int, *more: int) -> tuple[int, ...]:
    """The key of the file open at ``fd`` in :data:`_VERIFIED`; a ValidationError if it
    is sparse (most of it holes: it cost its maker nothing, and the control plane a read
    of all of it, 31 GiB a submit, found by a review)."""
    st = os.fstat(fd)
    if st.st_size > _SPARSE_FROM and st.st_blocks * 512 < st.st_size // 2:
        raise image_error(
            "a file of the image is sparse (mostly holes), as no image's blob or archive is",
            "sparse",
            "give the image as skopeo or docker write it",
        )
    return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size, *more)


class _Blobs:
    """The blobs of a layout (a directory) or of an OCI archive (a tarball), by digest."""

    def __init__(self, layout: Layout, *, pulled: bool = False) -> None:
        self.layout = layout
        self.archive = layout.source.kind == "oci-archive"
        # skopeo's ``dir:`` copy (in ``blobs/`` of the folder), of another user's making:
        # each blob named by its hex alone, never reached through a link, nor linked
        self.pulled = pulled

    def small(self, digest: str, limit: int = MAX_JSON) -> bytes:
        """A JSON blob's bytes (at most ``limit``), checked against ``digest``."""
        raw = self.layout.read("blobs/" + digest.replace(":", "/", 1), limit=limit)
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            raise _broken(self.layout, f"the blob {digest} does not match its digest")
        return raw

    def walk(self, wanted: dict[str, int], into: Path | None) -> None:
        """Each of ``wanted`` (digest: size) is there with its size and hashes to its
        digest; with ``into``, copied there as it streams."""
        base = Path(self.layout.source.location)
        left = dict(wanted)
        try:
            if not self.archive:
                for digest in wanted:
                    name = "blobs/" + digest[7:] if self.pulled else _member(digest)
                    blob, have = open_regular(name, under=base, alone=self.pulled)
                    with blob:
                        key = _identity(blob.fileno())
                        self._take(blob, have, digest, left.pop(digest), into, key)
            else:
                with open_regular(base)[0] as fh, open_tar(fh) as tar:
                    for member in members(tar):
                        name = member.name.removeprefix("./")
                        digest = name.removeprefix("blobs/").replace("/", ":", 1)
                        if digest not in left or name != _member(digest) or not member.isfile():
                            continue
                        src = tar.extractfile(member)
                        assert src is not None
                        key = _identity(fh.fileno(), member.offset_data)
                        self._take(src, member.size, digest, left.pop(digest), into, key)
        except (OSError, tarfile.TarError) as exc:
            what = next(iter(left), "")
            raise _broken(self.layout, f"the blob {what} is missing ({exc})") from None
        if left:
            raise _broken(self.layout, f"the blob {next(iter(left))} is missing")

    def _take(
        self,
        src: IO[bytes],
        have: int,
        digest: str,
        size: int,
        into: Path | None,
        key: tuple[int, ...],
    ) -> None:
        """A blob of ``have`` bytes: it must be ``size`` and hash to ``digest`` (copied
        into ``into``; without, hashed unless this very file was already)."""
        if have != size:
            raise _broken(self.layout, f"the blob {digest} is {have} bytes, not {size}")
        known = _VERIFIED.get(key)
        if into is None and known == digest:
            return
        if known == "!" + digest:  # this very file failed before: not read again
            raise _broken(self.layout, f"the blob {digest} does not match its digest and size")
        if len(_VERIFIED) >= _VERIFIED_KEPT:
            _VERIFIED.clear()
        try:
            _stream(self.layout, src, digest, size, into and into / digest.partition(":")[2])
        except ValidationError:
            _VERIFIED[key] = "!" + digest
            raise
        _VERIFIED[key] = digest


def _member(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _manifest(blobs: _Blobs, digest: str, media_type: object) -> tuple[str, bytes, str]:
    """The image manifest ``digest`` names, following an index to this machine's entry:
    its digest, its bytes and its media type."""
    for _ in range(_MAX_DEPTH):
        raw = blobs.small(digest)
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise _broken(blobs.layout, f"the blob {digest} is not a JSON object")
        kind = doc.get("mediaType") or media_type
        if kind not in INDEX_TYPES:
            return digest, raw, str(kind or MANIFEST_TYPE)
        entries = doc.get("manifests")
        entry = host_platform([e for e in entries if isinstance(e, dict)]) if isinstance(
            entries, list
        ) else None  # fmt: skip
        if entry is None:
            raise image_error(
                f"{blobs.layout.source.location} has no image for this machine ({host_text()})",
                "platform_missing",
                "build the image for this machine's platform",
            )
        digest, media_type = _descriptor(blobs.layout, entry)[0], entry.get("mediaType")
    raise _broken(blobs.layout, "its indexes are nested too deep")


def _image(layout: Layout, digest: str) -> tuple[_Blobs, str, bytes, str, dict[str, int]]:
    """The image ``digest`` names: its manifest's digest, bytes and media type, and the
    blobs it needs (digest: size), within :data:`MAX_IMAGE_BYTES`."""
    if not DIGEST.match(digest):
        raise _broken(layout, f"{digest[:80]!r} is not a sha256 digest")
    blobs = _Blobs(layout)
    try:
        found, raw, media_type = _manifest(blobs, digest, None)
        manifest = json.loads(raw)
        layers = manifest.get("layers") or []
        if not isinstance(layers, list):
            raise _broken(layout, f"the manifest {found} has no list of layers")
        parts = dict([_descriptor(layout, manifest.get("config"))])
        parts |= dict(_descriptor(layout, d) for d in layers)
    except ValueError:
        raise _broken(layout, f"the blobs of {digest} are not valid JSON") from None
    within_limit(parts, str(layout.source.location))
    return blobs, found, raw, media_type, parts


def within_limit(parts: dict[str, int], where: str) -> None:
    """Refuse an image whose blobs (digest: size) are over :data:`MAX_IMAGE_BYTES`."""
    total = sum(parts.values())
    if total > MAX_IMAGE_BYTES:
        raise image_error(
            f"{where}: the image is {total} bytes, over the"
            f" {MAX_IMAGE_BYTES >> 30} GiB an image may have",
            "too_large",
            "make the image smaller",
        )


def vouch(layout: Layout, digest: str) -> None:
    """Refuse ``layout`` unless it holds the whole image ``digest`` names: its manifest,
    config and layers, each hashed (once per version of the file; sizes alone let a layout
    of empty sparse files of the right sizes be served a cached image, found by a review).
    (What its index.json says
    is the tenant's word: a layout naming the digest of an image it does not hold, one
    already in the cache, would be served that image, past its org's allowed sources.)"""
    blobs, *_, parts = _image(layout, digest)
    blobs.walk(parts, None)


def copy_image(layout: Layout, digest: str, dest: Path) -> str:
    """Make ``dest`` an OCI layout holding only the image ``digest`` names in ``layout``
    (see the module), its manifest tagged :data:`TAG`; returns the tag."""
    blobs, found, raw, _, parts = _image(layout, digest)
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise _broken(layout, f"the manifest {found} is not valid JSON") from None
    return _assemble(blobs, manifest, parts, dest, repr(layout.source.location))


def assemble(folder: Path, manifest: dict[str, Any], parts: dict[str, int], dest: Path) -> str:
    """Make ``dest`` an OCI layout of the image ``manifest`` (parsed, its descriptors
    checked, ``parts`` their digests and sizes) with its config and layers copied from
    ``folder/blobs`` (skopeo's ``dir:`` copy of another user's making), each checked as it
    is copied; returns its tag."""
    blobs = _Blobs(Layout(Source("oci", str(folder))), pulled=True)
    return _assemble(blobs, manifest, parts, dest, "the image")


def _assemble(
    blobs: _Blobs, manifest: dict[str, Any], parts: dict[str, int], dest: Path, what: str
) -> str:
    """Write ``dest``: the manifest as root writes it (:func:`.refs.canonical_manifest`), the
    blobs of ``parts`` copied and checked."""
    raw = canonical_manifest(manifest)
    found = "sha256:" + hashlib.sha256(raw).hexdigest()
    store = dest / "blobs" / "sha256"
    store.mkdir(parents=True)
    check_room(store, sum(parts.values()), what)  # (then .layers)
    (store / found.partition(":")[2]).write_bytes(raw)
    blobs.walk(parts, store)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = {"mediaType": MANIFEST_TYPE, "digest": found, "size": len(raw)}
    index = {"schemaVersion": 2, "manifests": [{**entry, "annotations": {REF_NAME: TAG}}]}
    (dest / "index.json").write_text(json.dumps(index))
    return TAG


# -- docker save archives ----------------------------------------------------------------
# skopeo makes a docker archive's manifest up from its config and its layers' sizes (their
# contents unhashed), so that digest is a forger's to match: an archive of the cached
# image's config and zero-filled layers was served that image (found by a review). Its
# key here is the archive's own sha256 with the image it selects (``path:name:tag``, @N).


def _whole(path: str, into: Path | None) -> str:
    """The sha256 of the regular file ``path`` (read as the reader, at most
    MAX_IMAGE_BYTES), copied to ``into`` on the way."""
    try:
        fh, size = open_regular(path)
    except OSError:
        raise image_error(
            f"no archive at {path} that the shards' user can read",
            "path_missing",
            "give a `docker save` tarball the shards' user can read",
        ) from None
    with fh:
        if size > MAX_IMAGE_BYTES:
            raise image_error(
                f"{path} is {size} bytes, over the {MAX_IMAGE_BYTES >> 30} GiB an image may have",
                "too_large",
                "make the image smaller",
            )
        if into is not None:  # the copy, then skopeo's layout of it (then .layers)
            check_room(into.parent, 2 * size, repr(str(path)))
        key = _identity(fh.fileno(), -1)
        if into is None and key in _VERIFIED:
            return _VERIFIED[key]
        hasher, left = hashlib.sha256(), size  # what it was when opened, were it to grow
        with open(into, "wb") if into is not None else contextlib.nullcontext() as out:
            while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
                hasher.update(chunk)
                if out is not None:
                    out.write(chunk)
                left -= len(chunk)
    found = hasher.hexdigest()
    if len(_VERIFIED) >= _VERIFIED_KEPT:
        _VERIFIED.clear()
    _VERIFIED[key] = found
    return found


def _archive_key(whole: str, selector: str | None) -> str:
    """The cache key of the image ``selector`` picks in an archive of sha256 ``whole``."""
    return "sha256:" + hashlib.sha256(f"{whole}\0{selector or ''}".encode()).hexdigest()


def archive_digest(path: str, selector: str | None) -> str:
    """The cache key of the image ``selector`` picks in the docker archive at ``path``."""
    return _archive_key(_whole(path, None), selector)


def copy_archive(path: str, selector: str | None, digest: str, dest: Path) -> None:
    """Copy the archive at ``path`` to ``dest``; it must still be the one ``digest`` was
    made of (else a ValidationError: it was changed since it was looked up)."""
    whole = _whole(path, dest)  # (its size and the room for it: as the reader saw it)
    if _archive_key(whole, selector) != digest:
        raise image_error(
            f"{path} is not the image {digest} any more (it was changed since it was looked up)",
            "changed",
            "submit the run again, so that the image it names now is checked",
        )
