"""Which image of a multi-platform index this machine runs.

An index lists one image per platform: ``os``, ``architecture`` and, where one
architecture has several levels, a ``variant``. For amd64 that is the x86-64
micro-architecture level the image was built for (``v1``-``v4``: an image built for ``v3``
uses AVX2 and dies of SIGILL on a CPU without it); for arm64 ``v8`` (the only one in use);
for 32-bit arm ``v5``-``v7``. The entry chosen is the one of the best level this CPU runs,
as containerd's platform matcher chooses; an entry without a variant is the
architecture's base level. An index whose entries all need more than this CPU has no
image for it (the caller's 422 names the platform).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

__all__ = ["host_platform", "host_text", "host_variants", "machine_arch"]

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le"}
_ARCH |= dict.fromkeys(("armv5l", "armv6l", "armv7l"), "arm")
# The x86-64 psABI's levels above the base one, by the CPU flags (as /proc/cpuinfo names
# them) each adds to the one below.
_X86_LEVELS = (
    ("v2", frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})),
    (
        "v3",
        frozenset({"abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}),
    ),
    ("v4", frozenset({"avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"})),
)
_ARM = {"armv5l": "v5", "armv6l": "v6", "armv7l": "v7"}
_CPUINFO = Path("/proc/cpuinfo")


def machine_arch() -> str:
    """This machine's architecture as OCI names it (``amd64``, ``arm64``...)."""
    return _ARCH.get(platform.machine(), platform.machine())


def _cpu_flags() -> frozenset[str]:
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def host_variants() -> tuple[str, ...]:
    """The variants of :func:`machine_arch` this CPU runs, best first; the last is the
    architecture's base level, which an entry without a variant is."""
    arch = machine_arch()
    if arch == "amd64":
        flags, levels = _cpu_flags(), ["v1"]
        for level, needs in _X86_LEVELS:
            if not needs <= flags:
                break
            levels.append(level)
        return tuple(reversed(levels))
    if arch == "arm64":
        return ("v8",)
    if arch == "arm":
        top = _ARM.get(platform.machine(), "v7")
        return tuple(f"v{n}" for n in range(int(top[1:]), 4, -1))
    return ("",)


def host_platform(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The linux entry of a multi-platform index that this machine runs best (see the
    module); None when it has none."""
    arch, variants = machine_arch(), host_variants()
    rank = {variant: n for n, variant in enumerate(variants)}
    best: tuple[int, int] | None = None
    chosen = None
    for n, entry in enumerate(entries):
        plat = entry.get("platform") or {}
        if not isinstance(plat, dict):
            continue
        if plat.get("os") != "linux" or plat.get("architecture") != arch:
            continue
        variant = plat.get("variant") or variants[-1]  # none: the base level
        if variants == ("",):  # an architecture whose levels are not known here: any
            variant = ""
        if not isinstance(variant, str) or variant not in rank:
            continue  # a level this CPU does not run
        key = (rank[variant], n)  # the best level, then the index's order
        if best is None or key < best:
            best, chosen = key, entry
    return chosen


def host_text() -> str:
    """This machine's platform as an error names it: ``linux/amd64 up to v3``."""
    best = host_variants()[0]
    return f"linux/{machine_arch()}" + (f" up to {best}" if best else "")
