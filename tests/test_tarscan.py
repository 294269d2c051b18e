"""A layer's tar headers are read one way, the way Go's archive/tar (umoci) reads them too,
or the layer is refused (images/tarscan.py).

Found by a review of the layer bound: Python's tarfile and Go's archive/tar disagree on
crafted headers, so a layer measured at 4 KiB by one was unpacked to 256 MiB by the other.
Each such header is refused here; every tar that common tools write is read.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from sylphx._server.images import tarscan

N = 1 << 20  # the hidden file's size in the crafted layers


def header(name: str, size: bytes | int = 0, kind: bytes = b"0", **raw: bytes) -> bytes:
    """A ustar header, ``size`` raw (12 bytes) or a number, fields at offsets overridden
    (``at148=b"..."``), its checksum made right unless ``at148`` is given."""
    block = bytearray(512)
    block[0 : len(name)] = name.encode()
    block[100:108], block[108:116], block[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    block[124:136] = size if isinstance(size, bytes) else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    for at, value in raw.items():
        offset = int(at.removeprefix("at"))
        block[offset : offset + len(value)] = value
    if "at148" not in raw:
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pax(*records: tuple[str, object]) -> bytes:
    body = b""
    for key, value in records:
        record = f" {key}={value}\n".encode()
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length = len(str(length)) + len(record)
        body += str(length).encode() + record
    return header("././@PaxHeader", len(body), b"x") + body + bytes(-len(body) % 512)


def data(n: int) -> bytes:
    return bytes(n + (-n % 512))


END = bytes(1024)


def _scan(layer: bytes) -> list[tuple[int, int, int]]:
    return list(tarscan.members(io.BytesIO(layer)))


def _checksum_led_by_nul() -> bytes:
    good = header("big", N)
    return good[:148] + b"\0" + good[148:154] + b"\0" + good[156:]


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        # a NUL-led size: Python read 0, Go reads N
        (header("big", (b"\0" + b"%o" % N).ljust(12, b"\0")) + data(N) + END, "size"),
        # pax size then GNU.sparse.realsize: Python kept the last, Go the first
        (pax(("size", N), ("GNU.sparse.realsize", 0)) + header("big") + data(N) + END, "GNU"),
        # two pax headers: Python kept the first's size, Go the second's
        (pax(("size", 0)) + pax(("size", N)) + header("big") + data(N) + END, "two"),
        # a NUL-led checksum: Python saw the end of the archive, Go a member
        (header("small") + _checksum_led_by_nul() + data(N) + END, "checksum"),
        # a wrong checksum
        (header("big", N, at148=b"0000001\0") + data(N) + END, "checksum"),
        # a global pax header: quadratic in Python, refused by umoci
        (header("g", 30, b"g") + data(30) + header("f") + END, "'g'"),
        # a sparse member: holes neither reader counts
        (header("s", 512, b"S") + data(512) + END, "'S'"),
        # an unknown type
        (header("u", 512, b"Z") + data(512) + END, "'Z'"),
        # a folder stating data: both readers read none, its "data" is more members
        (header("d/", N, b"5") + header("big", N - 1024) + data(N - 1024) + END, "data"),
        # a NUL-typed member named as a folder: a folder to both readers
        (header("d/", N, b"\0") + header("big", N - 1024) + data(N - 1024) + END, "folder"),
        # a NUL-typed member with no name: Go names it by its ustar prefix, "d/": a folder
        (
            header("", N, b"\0", at345=b"d") + header("big", N - 1024) + data(N - 1024) + END,
            "not named",
        ),
        # data after the end of the archive (umoci decompresses it all)
        (header("f") + END + b"\1" * 512, "after the end"),
        (header("f") + END + bytes(tarscan.MAX_TRAILER + 512), "after its end"),
        # truncated
        (header("big", N) + data(1024), "inside a member"),
        (header("f")[:300], "inside a header"),
        (pax(("size", 5)) + END, "after an extended header"),
        # pax records malformed, or a size not decimal
        (header("p", 6, b"x") + b"9 a=b\n" + data(6)[6:] + header("f") + END, "length"),
        (pax(("size", "0x10")) + header("f") + END, "decimal"),
        # base-256 other than 0x80-led
        (header("big", b"\xff" + bytes(11)) + END, "size"),
    ],
)
def test_a_header_two_readers_could_read_apart_is_refused(layer: bytes, why: str) -> None:
    with pytest.raises(tarscan.Refused, match=why):
        _scan(layer)


def test_plain_headers_are_read_as_go_reads_them() -> None:
    layer = (
        header("dir/", kind=b"5")
        + header("file", 1000)
        + data(1000)
        + pax(("path", "x" * 200), ("size", 3000), ("SCHILY.xattr.user.a", "b"))
        + header("ignored-size", 12)
        + data(3000)
        + header("big", b"\x80" + (5 << 30).to_bytes(11, "big"), at257=b"ustar  \0")
    )
    found = tarscan.members(io.BytesIO(layer))  # (the 5 GiB member's data is not there)
    records = pax(("path", "x" * 200), ("size", 3000), ("SCHILY.xattr.user.a", "b"))
    pax_bytes = int(records[124:135], 8)  # its records' length
    assert [next(found) for _ in range(4)] == [
        (ord("5"), 0, 0),
        (ord("0"), 1000, 0),
        (ord("0"), 3000, pax_bytes),  # the pax size wins; its records are counted
        (ord("0"), 5 << 30, 0),  # base-256, as GNU tar writes sizes past 8 GiB
    ]


def _gnu_tar(source: Path, fmt: str, out: Path) -> bytes:
    subprocess.run(
        ["tar", f"--format={fmt}", "--xattrs", "-cf", str(out), "-C", str(source), "."],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


@pytest.mark.parametrize(
    "fmt", ["gnu", "oldgnu", "posix", "ustar", "v7", "python-gnu", "python-pax"]
)
def test_what_common_tools_write_is_read(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("hi\n")
    (source / "rand").write_bytes(bytes(range(256)) * 400)
    (source / "empty").touch()
    (source / "link").symlink_to("a")
    (source / "hard").hardlink_to(source / "a")
    (source / ("l" * 90)).write_text("long\n")  # within v7's 100
    if fmt.startswith("python"):
        out = io.BytesIO()
        form = tarfile.GNU_FORMAT if fmt == "python-gnu" else tarfile.PAX_FORMAT
        with tarfile.open(fileobj=out, mode="w", format=form) as tar:
            tar.add(source, arcname=".")
        layer = out.getvalue()
    else:
        if shutil.which("tar") is None:
            pytest.skip("needs GNU tar")
        layer = _gnu_tar(source, fmt, tmp_path / "layer.tar")
    sizes = sorted(size for _, size, _ in tarscan.members(io.BytesIO(layer)))
    assert sizes == sorted([0, 0, 0, 0, 0, 3, 5, 102400])  # ., sub, empty, link, hard
