"""A strict reader of a layer's tar headers: what each member's data size is, or a refusal.

``umoci`` unpacks with Go's ``archive/tar``; the measure of :mod:`.layers` must see the very
members, of the very sizes, that it will write. Python's ``tarfile`` did not (found by a
review): a size field led by a NUL byte (Python 0, Go N), a pax ``size`` followed by
``GNU.sparse.realsize`` or a second pax header (each reader keeps another one), a header
with a NUL-led checksum or a base-256 uid (Python: the end of the archive; Go: a member),
global pax headers (quadratic in Python), data past the end of the archive (read by umoci
to check the digest). Each let a layer of ~0.3 MiB write 256 MiB against a 32 MiB bound.

So nothing is guessed here: a header is read in the one way both readers agree on, or the
layer is refused (:class:`Refused`). What is accepted:

- numeric fields of octal digits, spaces around them and NULs after them, or (size only)
  base-256 led by ``0x80``; a checksum that matches, over the header as 512 unsigned or
  signed bytes;
- members of type ``0``/NUL/``7`` (regular), ``1``-``6`` (links, devices, folders, FIFOs:
  no data, so a size of 0), each after at most one pax header (``x``), one GNU long name
  (``L``) and one long link (``K``); a NUL-typed member named, and not as a folder (both
  readers make ``…/`` a folder with no data, and Go names one of an empty name by its
  ustar prefix);
- pax records ``LEN key=value\\n``, each key once, ``size`` decimal; no ``GNU.sparse.*``;
- the end: a block of zeros, then only zeros (at most :data:`MAX_TRAILER` bytes), or the
  end of the data at a header's place.

Refused: global pax headers (``g``: umoci 0.4.7 cannot unpack them either), GNU sparse
members (``S``, or pax ``GNU.sparse.*``: their holes are data neither reader counts),
anything else. Real layers (docker, buildah, umoci, skopeo, BuildKit) use none of those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

__all__ = ["MAX_EXTENDED", "MAX_TRAILER", "REGULAR", "Member", "Refused", "members"]

BLOCK = 512
MAX_EXTENDED = 64 << 10  # a pax header's or a GNU long name's own data
MAX_TRAILER = 1 << 20  # zeros after the end of the archive (writers pad to 10 KiB)
_CHUNK = 1 << 20
REGULAR = frozenset(b"07\0")  # typeflags of members with data
_NO_DATA = frozenset(b"123456")
_EXTENDED = frozenset(b"xLK")
_OCTAL = re.compile(rb" *([0-7]+)[ \0]*")
_RECORD = re.compile(rb"(\d+) ([^=\n]+)=")
_ZEROS = bytes(BLOCK)


class Refused(ValueError):
    """A layer that is not plainly a tar archive: the reason, for the user."""


# (typeflag, bytes of data that follow it, bytes of its extended headers: a pax header's
# xattrs are written too, up to MAX_EXTENDED a member)
Member = tuple[int, int, int]


def _octal(field: bytes, what: str) -> int:
    if field.strip(b" \0") == b"":
        return 0
    found = _OCTAL.fullmatch(field)
    if found is None:
        raise Refused(f"a header's {what} is not plain octal ({field!r})")
    return int(found.group(1), 8)


def _size(field: bytes) -> int:
    if field[:1] == b"\x80":  # base-256, positive: files past 8 GiB
        return int.from_bytes(field[1:], "big")
    return _octal(field, "size")


def _check(header: bytes) -> None:
    stated = _octal(header[148:156], "checksum")
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    signed = unsigned - 256 * sum(1 for b in blanked if b > 127)
    if stated not in (unsigned, signed):
        raise Refused("a header's checksum does not match")


def _pax(data: bytes) -> tuple[int | None, bytes]:
    """The ``size`` a pax header states (None: it states none) and its ``path``; strict
    (see the module)."""
    seen: set[bytes] = set()
    size, path, at = None, b"", 0
    while at < len(data):
        found = _RECORD.match(data, at)
        if found is None:
            raise Refused("a pax header's records are malformed")
        length, key = int(found.group(1)), found.group(2)
        end = at + length
        if length < found.end() - at + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise Refused("a pax record's length is wrong")
        if key in seen or key.startswith(b"GNU.sparse"):
            raise Refused(f"a pax header repeats or uses {key[:40]!r}")
        seen.add(key)
        if key == b"size":
            value = data[found.end() : end - 1]
            if not value.isdigit():
                raise Refused("a pax size is not a decimal number")
            size = int(value)
        elif key == b"path":
            path = data[found.end() : end - 1]
        at = end
    return size, path


class _Reader:
    """Exact reads from the layer's data, counted (``taken``)."""

    def __init__(self, data: IO[bytes]) -> None:
        self.data, self.taken = data, 0

    def read(self, n: int) -> bytes:
        got = self.data.read(n)
        while len(got) < n and (more := self.data.read(n - len(got))):
            got += more
        self.taken += len(got)
        return got

    def skip(self, n: int) -> None:
        while n > 0:
            got = self.read(min(n, _CHUNK))
            if not got:
                raise Refused("the layer ends inside a member's data")
            n -= len(got)

    def rest_is_zeros(self) -> None:
        left = MAX_TRAILER
        while chunk := self.read(min(_CHUNK, left + 1)):
            if chunk.count(0) != len(chunk):
                raise Refused("the layer has data after the end of its archive")
            left -= len(chunk)
            if left < 0:
                raise Refused(f"the layer has over {MAX_TRAILER} bytes after its end")


def members(data: IO[bytes]) -> Iterator[Member]:
    """Each member of the tar stream ``data`` (decompressed): its typeflag and data size."""
    reader = _Reader(data)
    while (member := _next(reader)) is not None:
        yield member
        size = member[1]
        reader.skip(size + (-size % BLOCK))


def _next(reader: _Reader) -> Member | None:
    """The next member, its extended headers read; None at the end of the archive."""
    extended: set[int] = set()
    pax_size: int | None = None
    meta = 0  # the extended headers' bytes
    names = []  # a NUL-typed member named "…/" is a folder to both readers: no data
    while (header := _header(reader, after_extended=bool(extended))) is not None:
        kind, size = header[156], _size(header[124:136])
        names.append(header[:100].split(b"\0", 1)[0])
        if kind not in _EXTENDED:
            if kind == 0 and (not names[-1] or any(n.endswith(b"/") for n in names)):
                # Go names it prefix + "/" + name: a folder too (found by a review)
                raise Refused("a member of type NUL is named as a folder, or not named")
            return _member(kind, size if pax_size is None else pax_size, meta)
        if kind in extended or size > MAX_EXTENDED:
            raise Refused("a member has two extended headers of one kind, or a large one")
        extended.add(kind)
        meta += size
        body = reader.read(size)
        if len(body) < size:
            raise Refused("the layer ends inside an extended header")
        reader.skip(-size % BLOCK)
        if kind == ord("x"):
            pax_size, path = _pax(body)
            names.append(path)
        elif kind == ord("L"):
            names.append(body.split(b"\0", 1)[0])
    return None


def _header(reader: _Reader, *, after_extended: bool) -> bytes | None:
    """The next header block, checked; None at the end (only zeros may follow it)."""
    header = reader.read(BLOCK)
    if header and header != _ZEROS:
        if len(header) < BLOCK:
            raise Refused("the layer ends inside a header")
        _check(header)
        return header
    if after_extended:
        raise Refused("the layer ends after an extended header")
    if header:
        reader.rest_is_zeros()
    return None


def _member(kind: int, size: int, meta: int) -> Member:
    if kind in _NO_DATA:
        if size:
            raise Refused(f"a member of type {chr(kind)!r} states data of its own")
    elif kind not in REGULAR:
        raise Refused(f"a member of type {chr(kind)!r} (sparse, global or unknown)")
    return kind, size, meta
