"""A ``docker save`` archive's layers measured before skopeo reads any of them.

skopeo turns a docker archive into an OCI layout by inflating each layer, whatever it is
compressed with, and compressing it again: a 10 KiB archive whose layer was a bzip2 stream
of a gigabyte of zeros kept skopeo at a core for 14 s before anything measured it, and a
few KiB more for the whole pull timeout (found by a review). ``docker save`` writes its
layers as plain tars, so each layer the archive's ``manifest.json`` names is measured here,
as it is, in our own copy of the archive (:func:`.snapshot.copy_archive`: root's, its
sha256 the cache key): a compressed layer is refused by :mod:`.tarscan` at its first
header, and the image's bounds (:mod:`.layers`) are applied before skopeo runs. The
archive itself is read by :mod:`.tarscan` first (Python's reading of it must be Go's),
and may not hold a name twice (skopeo takes the first, a review found a bomb first and a
small layer of the same name after it).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from pathlib import Path

from . import tarscan
from .layers import MAX_UNPACKED_BYTES, PLAIN, Measure, measure_stream
from .reader import members, open_tar
from .refs import MAX_JSON, image_error

__all__ = ["measure_archive"]

_HOPS = 4  # links to a layer (docker 25 writes its legacy paths as links to blobs/)


def _broken(where: str, what: str) -> Exception:
    return image_error(
        f"{where} is not a `docker save` archive as docker writes them: {what}",
        "layout_broken",
        "give an archive written by `docker save` (its layers uncompressed)",
    )


def _layer_names(tar: tarfile.TarFile, where: str) -> set[str]:
    """The layers every image of the archive names (its ``manifest.json``)."""
    for member in members(tar):
        if member.name.removeprefix("./") == "manifest.json" and member.isfile():
            found = tar.extractfile(member)
            raw = found.read(MAX_JSON + 1) if found is not None else b""
            break
    else:
        raise _broken(where, "it has no manifest.json")
    try:
        images = json.loads(raw) if len(raw) <= MAX_JSON else None
        names = {str(layer) for image in images for layer in image["Layers"]}  # type: ignore[union-attr]
    except (ValueError, TypeError, KeyError):
        raise _broken(where, "its manifest.json does not list layers") from None
    return {posixpath.normpath(name.removeprefix("./")) for name in names}


def _follow(entries: dict[str, tarfile.TarInfo], name: str) -> tarfile.TarInfo | None:
    """The regular member ``name`` is, or links to (in a few hops); None if none."""
    found = entries.get(name)
    for _ in range(_HOPS):
        if found is None or not found.issym():
            break
        name = posixpath.normpath(posixpath.join(posixpath.dirname(name), found.linkname))
        found = entries.get(name)
    return found if found is not None and found.isfile() else None


def measure_archive(path: Path, where: str, limit: int = MAX_UNPACKED_BYTES) -> Measure:
    """Measure every layer the archive at ``path`` (ours) names, as :mod:`.layers` does
    an OCI layout's; a ValidationError on ``image`` past the bounds or for a layer that
    is not a plain tar."""
    try:
        return _measure(path, where, limit)
    except (tarfile.TarError, tarscan.Refused, OSError) as exc:
        raise _broken(where, str(exc)) from None


def _measure(path: Path, where: str, limit: int) -> Measure:
    with open(path, "rb") as fh:  # the archive itself read as Go reads it, or refused
        for _ in tarscan.members(fh):
            pass
    with open(path, "rb") as fh, open_tar(fh) as tar:
        wanted = _layer_names(tar, where)
    entries: dict[str, tarfile.TarInfo] = {}
    counted = Measure(where, limit)
    with open(path, "rb") as fh, open_tar(fh) as tar:
        for member in members(tar):
            name = posixpath.normpath(member.name.removeprefix("./"))
            if name in entries:  # skopeo takes the first, a dict the last
                raise _broken(where, f"it holds {name[:200]!r} twice")
            entries[name] = member
        for name in sorted(wanted):
            layer = _follow(entries, name)
            if layer is None:
                raise _broken(where, f"its layer {name[:200]!r} is missing")
            data = tar.extractfile(layer)
            assert data is not None
            measure_stream(data, PLAIN, counted)
    return counted
