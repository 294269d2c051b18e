"""P10: what measuring an image's layers before unpacking it costs, against umoci's unpack.

An image's layers are read through once before ``umoci unpack`` (``images/layers.py``):
the bound on what it unpacks to, so that a gzip bomb never reaches the disk. The baseline
is the unpack itself (``umoci unpack`` of the same layout, to a fresh folder each round,
on the same disk). Three ways of measuring are timed, interleaved round by round:

- **measure (zlib-ng)**: ``layers.measure`` as the store calls it;
- **measure (zlib)**: the same with the standard library's gzip, what it replaced;
- **zlib-ng alone**: the layer decompressed, nothing parsed (the floor of any measure).

The image: one layer made by ``umoci repack`` of a copy of a folder (default: this
Python's standard library and site-packages, some hundreds of MB of ordinary files).

    python bench/p10_images.py [--source DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import machine, table
from zlib_ng import gzip_ng

from sylphx._server.images import layers

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layout(source: Path, work: Path) -> tuple[Path, Path]:
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:b"], check=True)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:b", str(bundle)], check=True, capture_output=True
    )
    shutil.copytree(source, bundle / "rootfs" / "data", symlinks=True)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:b", str(bundle)], check=True)
    shutil.rmtree(bundle)
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    return layout, blob


def _cpu(fn: Callable[[], object]) -> float:
    """CPU seconds of ``fn`` and the children it waited for."""
    before = time.process_time() + _children()
    fn()
    return time.process_time() + _children() - before


def _children() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(sysconfig.get_paths()["purelib"]).parent
    parser.add_argument("--source", type=Path, default=default)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("umoci") is None:
        sys.exit("needs umoci (make system-deps)")
    print(machine())
    with tempfile.TemporaryDirectory(prefix="sylphx-p10-") as tmp:
        work = Path(tmp)
        layout, blob = _layout(args.source, work)
        counted = layers.measure([(blob, GZ)], "bench")
        print(
            f"layer: {blob.stat().st_size / 1e6:.0f} MB gzip, {counted.entries:,} members,"
            f" {counted.bytes / 1e6:.0f} MB counted"
        )

        def unpack() -> None:  # into a fresh folder; the last one removed outside the timing
            target = Path(tempfile.mkdtemp(dir=work)) / "bundle"
            argv = ["umoci", "unpack", "--image", f"{layout}:b", str(target)]
            subprocess.run(argv, check=True, capture_output=True)

        def with_zlib() -> None:
            saved = vars(layers)["gzip_ng"]
            setattr(layers, "gzip_ng", gzip)  # noqa: B010 - the standard library's
            try:
                layers.measure([(blob, GZ)], "bench")
            finally:
                setattr(layers, "gzip_ng", saved)  # noqa: B010

        def inflate() -> None:
            with open(blob, "rb") as fh, gzip_ng.GzipFile(fileobj=fh) as data:  # type: ignore[no-untyped-call]
                while data.read(1 << 20):
                    pass

        ways: dict[str, Callable[[], object]] = {
            "umoci unpack (baseline)": unpack,
            "measure (zlib-ng)": lambda: layers.measure([(blob, GZ)], "bench"),
            "measure (zlib)": with_zlib,
            "zlib-ng alone": inflate,
        }
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                cpu[name].append(_cpu(way))
            for folder in work.glob("tmp*"):
                shutil.rmtree(folder)
        base = statistics.median(cpu["umoci unpack (baseline)"])
        rows = []
        for name, samples in cpu.items():
            med = statistics.median(samples)
            rows.append(
                [name, f"{med:.2f} ({min(samples):.2f}-{max(samples):.2f})", f"{med / base:.2f}x"]
            )
        table(
            f"P10: CPU seconds, median (min-max) of {args.rounds} rounds; ratio to umoci's unpack",
            ["way", "CPU s", "/ unpack"],
            rows,
        )


if __name__ == "__main__":
    main()
