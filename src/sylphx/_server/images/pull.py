"""A registry's image, checked by root before anything of it is unpacked or cached.

A registry's skopeo runs confined, as its own user (executors.envelope.egress), yet what it
writes is only its word. Had it converted the image to an OCI layout itself (as it did), an
exploited skopeo -- a malicious registry's answer away -- could have left any image there
under a well-known digest: the cache is shared and keyed by digest, so the next org that
pins that digest would have run the attacker's files. So root believes none of it:

- the manifest is ``skopeo inspect --raw`` of ``repository@digest`` and must hash to the
  digest (:func:`manifest_of`); an index's entry for this machine is fetched the same way,
  by its own digest, and the copy is of that one manifest;
- skopeo copies its blobs to the ``dir:`` transport, which keeps them as the registry
  served them (a Docker manifest's config too, which its OCI conversion rewrites);
- root builds an OCI layout of its own (:func:`.snapshot.assemble`): a manifest it
  writes of the checked one's descriptors (a Docker schema 2 one's media types in OCI's
  names: the same blobs), and each blob copied only when it has its descriptor's size
  and hashes to its digest, read from ``work/pull/blobs`` through no link and with no
  other name (``work/pull`` is skopeo's user's to change).

The image's size is checked against its manifest before the copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sylphx._core.errors import ValidationError

from .platforms import host_platform, host_text
from .refs import (
    DIGEST,
    INDEX_TYPES,
    MANIFEST_TYPE,
    MAX_JSON,
    Source,
    image_error,
)
from .room import remove_tree
from .snapshot import assemble, within_limit

__all__ = ["Skopeo", "manifest_of", "pull", "tag_digest"]

log = logging.getLogger("sylphx.images")

# (args, timeout, ref, registry, writes) -> its stdout; a ValidationError when it fails
Skopeo = Callable[[list[str], float, str, str, Path | None], bytes]

_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_MAX_DEPTH = 4  # nested indexes


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tag_digest(skopeo: Skopeo, source: Source, ref: str, timeout: float) -> str:
    """The digest of the manifest the registry's tag ``source`` names now."""
    args = ["--command-timeout", f"{int(timeout)}s", "inspect", "--raw", source.skopeo()]
    raw = skopeo(args, timeout + 5, ref, source.registry, None)
    if len(raw) > MAX_JSON:  # (its output is cut there: see room.communicate)
        raise _unusable(ref, f"its manifest is over {MAX_JSON >> 20} MiB")
    return _sha256(raw)


def manifest_of(
    skopeo: Skopeo, repository: str, digest: str, ref: str, registry: str, timeout: float
) -> bytes:
    """The bytes of the manifest (or index) ``repository@digest``, as the registry
    answers ``skopeo inspect --raw``: a ValidationError on ``image`` unless they hash to
    ``digest``."""
    pinned = f"docker://{repository}@{digest}"
    args = ["--command-timeout", f"{int(timeout)}s", "inspect", "--raw", pinned]
    raw = skopeo(args, timeout + 5, ref, registry, None)
    if len(raw) > MAX_JSON:  # (its output is cut there: see room.communicate)
        raise _unusable(ref, f"its manifest is over {MAX_JSON >> 20} MiB")
    if _sha256(raw) != digest:
        raise image_error(
            f"registry {registry} answered {ref!r} with another manifest",
            "digest_mismatch",
            "check the digest, or refer to the image by its tag",
        )
    return raw


def pull(
    skopeo: Skopeo,
    repository: str,
    digest: str,
    ref: str,
    registry: str,
    timeouts: tuple[float, float],
    work: Path,
) -> tuple[Path, str]:
    """Pull the image ``repository@digest`` (``timeouts``: a look-up's, the copy's) into
    an OCI layout of root's making in ``work``; skopeo writes only ``work/pull``. Returns
    the layout and its tag."""
    instance, raw = _instance(skopeo, repository, digest, ref, registry, timeouts[0])
    manifest, parts = _checked(raw, ref)
    within_limit(parts, repr(ref))  # before a byte of it is copied
    folder = work / "pull"
    copy = ["copy", "--quiet", f"docker://{repository}@{instance}", f"dir:{folder / 'blobs'}"]
    skopeo(copy, timeouts[1], ref, registry, folder)
    layout = work / "image"
    try:
        return layout, assemble(folder, manifest, parts, layout)
    except ValidationError as exc:
        if exc.details[0].get("rule") != "layout_broken":  # no room, sparse: as they are
            raise
        log.warning("pulling %r from %s: %s", ref, registry, exc.message)
        raise image_error(
            f"what was pulled for {ref!r} from {registry} is not the image its checked"
            " manifest names (a blob missing, or not matching its digest and size)",
            "digest_mismatch",
            "pull it again; if it persists, the registry or the network serves other bytes",
        ) from None
    finally:
        remove_tree(folder)  # (its blobs are copied: room for the unpack)


def _instance(
    skopeo: Skopeo, repository: str, digest: str, ref: str, registry: str, timeout: float
) -> tuple[str, bytes]:
    """The image manifest ``digest`` names for this machine (an index followed to its
    linux entry for this architecture): its digest and checked bytes."""
    for _ in range(_MAX_DEPTH):
        raw = manifest_of(skopeo, repository, digest, ref, registry, timeout)
        doc = _document(raw, ref)
        if doc.get("mediaType") not in INDEX_TYPES and "manifests" not in doc:
            return digest, raw
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _unusable(ref, "its index has no list of manifests")
        entry = host_platform(
            [e for e in entries if isinstance(e, dict) and isinstance(e.get("platform"), dict)]
        )
        if entry is None:
            raise image_error(
                f"{ref!r} has no image for this machine's platform ({host_text()})",
                "platform_missing",
                "build the image for linux on this machine's architecture",
            )
        digest = _digest(entry, ref)
    raise _unusable(ref, "its indexes are nested too deep")


def _checked(raw: bytes, ref: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The checked image manifest ``raw`` (an OCI or a Docker schema 2 one), and the
    blobs it needs (digest: size)."""
    doc = _document(raw, ref)
    kind = doc.get("mediaType")
    if doc.get("schemaVersion") != 2 or kind not in (None, MANIFEST_TYPE, _DOCKER_MANIFEST):
        raise _unusable(ref, f"its manifest is of a kind that cannot be unpacked ({kind!r:.80})")
    config, layers = doc.get("config"), doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise _unusable(ref, "its manifest has no config or no list of layers")
    parts: dict[str, int] = {}
    for d in [config, *layers]:
        if not isinstance(d, dict) or not isinstance(d.get("mediaType", ""), str):
            raise _unusable(ref, "a descriptor of its manifest is not shaped as OCI says")
        size = d.get("size")
        if not isinstance(size, int) or size < 0:
            raise _unusable(ref, "a descriptor of its manifest has no valid size")
        parts[_digest(d, ref)] = size
    return doc, parts


def _document(raw: bytes, ref: str) -> dict[str, Any]:
    doc = None
    if len(raw) <= MAX_JSON:
        with contextlib.suppress(ValueError):
            doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("mediaType", ""), str):
        raise _unusable(ref, "its manifest is not a JSON object shaped as OCI says")
    return doc


def _digest(descriptor: dict[str, Any], ref: str) -> str:
    value = descriptor.get("digest")
    if not isinstance(value, str) or not DIGEST.match(value):
        raise _unusable(ref, f"its manifest names a digest that is not sha256 ({value!r:.80})")
    return value


def _unusable(ref: str, why: str) -> ValidationError:
    return image_error(
        f"the registry's image {ref!r} cannot be used: {why}",
        "manifest_unsupported",
        "push the image with an OCI or Docker schema 2 manifest (docker, buildah and"
        " skopeo write one)",
    )
