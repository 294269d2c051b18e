"""What an image's layers unpack to, measured before anything is unpacked.

The image cache is on the host's disk, shared by every tenant. A layer is compressed: a
gzip layer of 10 MiB can hold a file of 10 GiB of zeros, so an image whose blobs pass
every size check can still fill the host's disk as it is unpacked -- stopping every other
tenant's logs, volumes and store writes. So before ``umoci unpack`` each layer of our own
copy (:mod:`.snapshot`: root's, checked against its digest, so the bytes measured are the
bytes unpacked) is read through once: the sizes its members state, rounded up to the
filesystem's blocks, plus a block for each member. An image is refused once that passes
the bound (:data:`MAX_UNPACKED_BYTES` unless the operator set another), or more than
:data:`MAX_ENTRIES` members; reading stops there, so a bomb costs at most the bound's
decompression (zlib-ng's: half of zlib's time; a tenth of umoci's own unpack of a 264 MB
layer, BENCHMARKS P10). The sum is an upper bound of what ``umoci`` writes: a later
layer's files replace an earlier one's, never add to them -- provided both read the same
members of the same sizes, which :mod:`.tarscan` sees to (Python's ``tarfile`` did not:
found by a review).
:mod:`.room` watches the disk while umoci runs all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, cast

from zlib_ng import gzip_ng, zlib_ng

from .refs import image_error
from .tarscan import REGULAR, Refused, members

__all__ = [
    "MAX_ENTRIES",
    "MAX_UNPACKED_BYTES",
    "PLAIN",
    "TAR",
    "TAR_GZIP",
    "Measure",
    "measure",
    "measure_stream",
]

MAX_UNPACKED_BYTES = 64 << 30  # an image's files unpacked (SYLPHX_IMAGE_MAX_UNPACKED_BYTES)
MAX_ENTRIES = 500_000  # files, folders and links of an image's layers (large ones: ~100k)
BLOCK = 4096  # what a file's size is rounded up to, and what each member is counted
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_OCI = "application/vnd.oci.image.layer."
PLAIN = f"{_OCI}v1.tar"
TAR = frozenset({PLAIN, f"{_OCI}nondistributable.v1.tar"})  # what umoci unpacks
TAR_GZIP = frozenset(f"{t}+gzip" for t in TAR)
_CORRUPT = cast(type[Exception], zlib_ng.error)  # (its stub says an instance)


class Measure:
    """A running count over an image's layers, refusing past its bounds."""

    def __init__(self, where: str, limit: int = MAX_UNPACKED_BYTES) -> None:
        self.where = where  # the reference, for messages
        self.limit = limit
        self.bytes = 0
        self.entries = 0

    def add(self, size: int, meta: int = 0) -> None:
        """One member: ``size`` bytes of data, ``meta`` bytes of extended headers (its
        xattrs are written too)."""
        self.bytes += -(-max(size, 0) // BLOCK) * BLOCK + BLOCK + meta
        self.entries += 1
        if self.bytes > self.limit:
            raise image_error(
                f"{self.where} unpacks to more than the {_size(self.limit)} an image may"
                " have on this platform",
                "too_large",
                "make the image smaller (fewer or smaller files), or ask an operator to"
                " raise SYLPHX_IMAGE_MAX_UNPACKED_BYTES",
            )
        if self.entries > MAX_ENTRIES:
            raise image_error(
                f"{self.where} holds more than {MAX_ENTRIES:,} files, folders and links",
                "too_large",
                "make the image hold fewer files (archive many small ones into one)",
            )


def _size(value: int) -> str:
    return f"{value / (1 << 30):g} GiB" if value >= 1 << 30 else f"{value / (1 << 20):g} MiB"


def _layer(fh: IO[bytes], media_type: object) -> IO[bytes]:
    """``fh`` decompressed as its media type says -- as umoci decides, not by its first
    bytes: a blob typed ``tar`` whose bytes were also gzip's was measured as the small tar
    in its gzip body and unpacked as the large one in its header (found by a review) --
    and refused when its first bytes say otherwise."""
    head = fh.read(4)
    fh.seek(0)
    compressed = head.startswith(_GZIP) or head.startswith(_ZSTD)
    if media_type in TAR_GZIP and head.startswith(_GZIP):
        return cast(IO[bytes], gzip_ng.GzipFile(fileobj=fh, mode="rb"))  # type: ignore[no-untyped-call]
    if media_type in TAR and not compressed:
        return fh
    if media_type in TAR | TAR_GZIP:
        raise Refused(f"its bytes are not what its media type ({media_type}) says")
    raise Refused(f"layers of type {str(media_type)[:80]!r} cannot be unpacked (tar, tar+gzip)")


def measure(
    blobs: Iterable[tuple[Path, object]], where: str, limit: int = MAX_UNPACKED_BYTES
) -> Measure:
    """Read the layers at ``blobs`` (files of our own, each with its descriptor's media
    type) through and count them (see the module); a ValidationError on ``image`` past
    the bounds or for a layer not plainly a tar archive (:mod:`.tarscan`)."""
    counted = Measure(where, limit)
    for path, media_type in blobs:
        with open(path, "rb") as fh:
            measure_stream(fh, media_type, counted)
    return counted


def measure_stream(fh: IO[bytes], media_type: object, counted: Measure) -> None:
    """Count one layer, ``fh`` (seekable), of ``media_type`` into ``counted``."""
    try:
        with _layer(fh, media_type) as data:
            for kind, size, meta in members(data):
                counted.add(size if kind in REGULAR else 0, meta)
    except (Refused, OSError, EOFError, _CORRUPT) as exc:
        raise image_error(
            f"a layer of {counted.where} cannot be read as a plain tar archive ({exc})",
            "layout_broken",
            "build the image with a common tool (docker, buildah, umoci), its layers"
            " uncompressed or gzip-compressed",
        ) from None
