"""Which image of a multi-platform index a machine runs (images/platforms.py): the best
micro-architecture level its CPU has, never one above it (an amd64/v3 image on a CPU
without AVX2 dies of SIGILL); an entry without a variant is the base level."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sylphx._server.images import platforms

V2 = frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3", "sse2"})
V3 = V2 | {"abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}
V4 = V3 | {"avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"}
Host = Callable[[str, frozenset[str]], None]


def entry(arch: str, variant: object = None, os: str = "linux") -> dict[str, object]:
    plat: dict[str, object] = {"os": os, "architecture": arch}
    if variant is not None:
        plat["variant"] = variant
    return {"digest": f"{os}/{arch}/{variant}", "platform": plat}


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """Pretend to be a machine (``platform.machine()``) with these CPU flags."""

    def pretend(machine: str, flags: frozenset[str]) -> None:
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(platforms, "_cpu_flags", lambda: flags)
        platforms.host_variants.cache_clear()

    yield pretend
    platforms.host_variants.cache_clear()


AMD64, AMD64_V2, AMD64_V3 = entry("amd64"), entry("amd64", "v2"), entry("amd64", "v3")
AMD64_V1, AMD64_V4 = entry("amd64", "v1"), entry("amd64", "v4")


@pytest.mark.parametrize(
    ("machine", "flags", "entries", "chosen"),
    [
        # amd64: the best level the CPU has; none above it; no variant is v1
        ("x86_64", V2, [AMD64_V3, AMD64], AMD64),
        ("x86_64", V2, [AMD64, AMD64_V2, AMD64_V3], AMD64_V2),
        ("x86_64", V3, [AMD64, AMD64_V2, AMD64_V3, AMD64_V4], AMD64_V3),
        ("x86_64", V4, [AMD64_V4, AMD64], AMD64_V4),
        ("x86_64", frozenset(), [AMD64_V1], AMD64_V1),
        ("x86_64", V3, [AMD64_V4], None),
        ("x86_64", V2 - {"popcnt"}, [AMD64_V2, AMD64_V1], AMD64_V1),
        ("x86_64", V3, [AMD64, AMD64_V1], AMD64),  # the same level: the index's order
        # what is not this machine's platform is never chosen
        ("x86_64", V4, [entry("arm64"), entry("amd64", os="windows")], None),
        ("x86_64", V4, [{"digest": "x", "platform": "linux/amd64"}, {"digest": "y"}], None),
        ("x86_64", V4, [entry("amd64", 3), entry("amd64", "v9")], None),
        # arm64: v8 (or none); 32-bit arm: its own level and the ones below
        (
            "aarch64",
            frozenset(),
            [entry("arm64", "v9"), entry("arm64", "v8")],
            entry("arm64", "v8"),
        ),
        ("aarch64", frozenset(), [entry("arm64")], entry("arm64")),
        ("armv7l", frozenset(), [entry("arm", "v6"), entry("arm", "v7")], entry("arm", "v7")),
        ("armv6l", frozenset(), [entry("arm", "v7"), entry("arm", "v6")], entry("arm", "v6")),
        # an architecture whose levels are not known here: any variant of it
        ("s390x", frozenset(), [entry("amd64"), entry("s390x", "z15")], entry("s390x", "z15")),
    ],
)
def test_the_entry_chosen_is_the_best_this_cpu_runs(
    host: Host,
    machine: str,
    flags: frozenset[str],
    entries: list[dict[str, object]],
    chosen: dict[str, object] | None,
) -> None:
    host(machine, flags)
    assert platforms.host_platform(entries) == chosen


def test_the_cpu_level_is_read_from_the_flags_the_kernel_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {' '.join(sorted(V3))}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(platforms, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    platforms.host_variants.cache_clear()
    try:
        assert platforms.host_variants() == ("v3", "v2", "v1")
        assert platforms.host_text() == "linux/amd64 up to v3"
    finally:
        platforms.host_variants.cache_clear()
