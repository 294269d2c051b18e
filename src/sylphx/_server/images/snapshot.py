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
unpacked. Blobs are read as regular files only, and no bigger than their descriptor says
(a FIFO or ``/dev/zero`` named as a blob would hang or fill the control plane).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import IO, Any

from .refs import (
    DIGEST,
    INDEX_TYPES,
    REF_NAME,
    Layout,
    host_platform,
    image_error,
    open_regular,
)

__all__ = ["copy_image"]

TAG = "image"
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
    return digest, size


def _stream(layout: Layout, src: IO[bytes], digest: str, size: int, dest: Path) -> None:
    """Copy ``size`` bytes of ``src`` to ``dest``; they must hash to ``digest``."""
    hasher, left = hashlib.sha256(), size
    with open(dest, "wb") as out:
        while left > 0:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                break
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    if left or src.read(1) or "sha256:" + hasher.hexdigest() != digest:
        dest.unlink()
        raise _broken(layout, f"the blob {digest} does not match its digest and size")


class _Blobs:
    """The blobs of a layout (a directory) or of an OCI archive (a tarball), by digest."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.archive = layout.source.kind == "oci-archive"

    def small(self, digest: str, limit: int = 4 << 20) -> bytes:
        """A JSON blob's bytes (at most ``limit``), checked against ``digest``."""
        raw = self.layout.read("blobs/" + digest.replace(":", "/", 1), limit=limit)
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            raise _broken(self.layout, f"the blob {digest} does not match its digest")
        return raw

    def copy(self, wanted: dict[str, int], into: Path) -> None:
        """Each of ``wanted`` (digest: size) into ``into``, verified as it streams."""
        base = Path(self.layout.source.location)
        if not self.archive:
            for digest, size in wanted.items():
                try:
                    src = open_regular(base / "blobs" / digest.replace(":", "/", 1))
                except OSError:
                    raise _broken(self.layout, f"the blob {digest} is missing") from None
                with src:
                    _stream(self.layout, src, digest, size, into / digest.partition(":")[2])
            return
        left = dict(wanted)
        try:
            with open_regular(base) as fh, tarfile.open(fileobj=fh) as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    digest = name.removeprefix("blobs/").replace("/", ":", 1)
                    if digest not in left or not member.isfile():
                        continue
                    member_file = tar.extractfile(member)
                    assert member_file is not None
                    size = left.pop(digest)
                    _stream(self.layout, member_file, digest, size, into / name[13:])
        except (OSError, tarfile.TarError) as exc:
            raise _broken(self.layout, f"the archive cannot be read ({exc})") from None
        if left:
            raise _broken(self.layout, f"the blob {next(iter(left))} is missing")


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
            return digest, raw, str(kind or "application/vnd.oci.image.manifest.v1+json")
        entry = host_platform(list(doc.get("manifests") or []))
        if entry is None:
            raise image_error(
                f"{blobs.layout.source.location} has no image for this machine's platform",
                "platform_missing",
                "build the image for this machine's platform",
            )
        digest, media_type = _descriptor(blobs.layout, entry)[0], entry.get("mediaType")
    raise _broken(blobs.layout, "its indexes are nested too deep")


def copy_image(layout: Layout, digest: str, dest: Path) -> str:
    """Make ``dest`` an OCI layout holding only the image ``digest`` names in ``layout``
    (see the module), its manifest tagged :data:`TAG`; returns the tag."""
    if not DIGEST.match(digest):
        raise _broken(layout, f"{digest[:80]!r} is not a sha256 digest")
    blobs = _Blobs(layout)
    try:
        found, raw, media_type = _manifest(blobs, digest, None)
        manifest = json.loads(raw)
        parts = [_descriptor(layout, manifest.get("config"))]
        parts += [_descriptor(layout, d) for d in manifest.get("layers") or []]
    except ValueError:
        raise _broken(layout, f"the blobs of {digest} are not valid JSON") from None
    store = dest / "blobs" / "sha256"
    store.mkdir(parents=True)
    (store / found.partition(":")[2]).write_bytes(raw)
    blobs.copy(dict(parts), store)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = {"mediaType": media_type, "digest": found, "size": len(raw)}
    index = {"schemaVersion": 2, "manifests": [{**entry, "annotations": {REF_NAME: TAG}}]}
    (dest / "index.json").write_text(json.dumps(index))
    return TAG
