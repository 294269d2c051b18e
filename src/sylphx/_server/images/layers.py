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
decompression (zlib-ng's: half of zlib's time, ~20% of umoci's own unpack of a 263 MB
layer). The sum is an upper bound of what ``umoci`` writes: a later layer's files replace
an earlier one's, never add to them -- provided both read the same members of the same
sizes, which :mod:`.tarscan` sees to (Python's ``tarfile`` did not: found by a review).
:mod:`.room` watches the disk while umoci runs all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, cast

from zlib_ng import gzip_ng, zlib_ng

from .refs import image_error
from .tarscan import REGULAR, Refused, members

__all__ = ["MAX_ENTRIES", "MAX_UNPACKED_BYTES", "Measure", "measure"]

MAX_UNPACKED_BYTES = 64 << 30  # an image's files unpacked (SYLPHX_IMAGE_MAX_UNPACKED_BYTES)
MAX_ENTRIES = 1_000_000  # files, folders and links of an image's layers together
BLOCK = 4096  # what a file's size is rounded up to, and what each member is counted
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_CORRUPT = cast(type[Exception], zlib_ng.error)  # (its stub says an instance)


class Measure:
    """A running count over an image's layers, refusing past its bounds."""

    def __init__(self, where: str, limit: int = MAX_UNPACKED_BYTES) -> None:
        self.where = where  # the reference, for messages
        self.limit = limit
        self.bytes = 0
        self.entries = 0

    def add(self, size: int) -> None:
        self.bytes += -(-max(size, 0) // BLOCK) * BLOCK + BLOCK
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


def _layer(fh: IO[bytes]) -> IO[bytes]:
    """``fh`` decompressed as its first bytes say (what umoci accepts: tar or gzip)."""
    head = fh.read(4)
    fh.seek(0)
    if head.startswith(_GZIP):
        return cast(IO[bytes], gzip_ng.GzipFile(fileobj=fh, mode="rb"))  # type: ignore[no-untyped-call]
    if head.startswith(_ZSTD):
        raise Refused("zstd-compressed layers cannot be unpacked here")
    return fh


def measure(blobs: Iterable[Path], where: str, limit: int = MAX_UNPACKED_BYTES) -> Measure:
    """Read the layers at ``blobs`` (files of our own) through and count them (see the
    module); a ValidationError on ``image`` past the bounds or for a layer not plainly a
    tar archive (:mod:`.tarscan`)."""
    counted = Measure(where, limit)
    for path in blobs:
        try:
            with open(path, "rb") as fh, _layer(fh) as data:
                for kind, size in members(data):
                    counted.add(size if kind in REGULAR else 0)
        except (Refused, OSError, EOFError, _CORRUPT) as exc:
            raise image_error(
                f"a layer of {where} cannot be read as a plain tar archive ({exc})",
                "layout_broken",
                "build the image with a common tool (docker, buildah, umoci), its layers"
                " uncompressed or gzip-compressed",
            ) from None
    return counted
