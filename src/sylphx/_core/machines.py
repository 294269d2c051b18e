"""Machine tiers: every shard of a run runs on the same tier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MachineName = Literal[
    "nano",
    "micro",
    "small",
    "standard",
    "large",
    "xlarge",
    "2xlarge",
    "mem-2xlarge",
    "gpu-small",
    "gpu-large",
]

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class Machine:
    """One tier: its CPU and memory ceiling and its billing weight."""

    name: str
    vcpu: float
    memory_bytes: int
    units: float  # compute-second weight relative to `standard`
    gpu: bool = False  # reserved in the API; refused at admission until GPU pools exist

    @property
    def memory_text(self) -> str:
        return format_bytes(self.memory_bytes)


MACHINES: dict[str, Machine] = {
    m.name: m
    for m in (
        Machine("nano", 0.1, 256 * MIB, 0.125),
        Machine("micro", 0.25, 512 * MIB, 0.25),
        Machine("small", 0.5, 1 * GIB, 0.5),
        Machine("standard", 1.0, 2 * GIB, 1.0),
        Machine("large", 2.0, 4 * GIB, 2.0),
        Machine("xlarge", 4.0, 8 * GIB, 4.0),
        Machine("2xlarge", 8.0, 16 * GIB, 8.0),
        Machine("mem-2xlarge", 4.0, 32 * GIB, 4.0),
        Machine("gpu-small", 4.0, 16 * GIB, 0.0, gpu=True),
        Machine("gpu-large", 8.0, 64 * GIB, 0.0, gpu=True),
    )
}
CPU_MACHINES = [name for name, m in MACHINES.items() if not m.gpu]

DEFAULT_MACHINE = "standard"


def format_bytes(n: float) -> str:
    """Human text for a byte count, e.g. ``36 GiB`` or ``512 MiB``."""
    if n >= GIB:
        value, unit = n / GIB, "GiB"
    else:
        value, unit = n / MIB, "MiB"
    return f"{value:.1f} {unit}".replace(".0 ", " ")


def format_cpus(n: float) -> str:
    """Human text for a vCPU count, e.g. ``18 vCPU`` or ``0.9 vCPU``."""
    return f"{round(n, 2):g} vCPU"


def parse_bytes(text: str) -> int:
    """Parse ``24GiB``, ``512M``, ``2g`` or a plain byte count."""
    raw = text.strip().lower().replace(" ", "")
    factors = {
        "kib": 1024,
        "kb": 1000,
        "k": 1024,
        "mib": MIB,
        "mb": 1000**2,
        "m": MIB,
        "gib": GIB,
        "gb": 1000**3,
        "g": GIB,
        "tib": 1024 * GIB,
        "tb": 1000**4,
        "t": 1024 * GIB,
        "b": 1,
    }
    number, factor = raw, 1
    for suffix, multiplier in factors.items():
        if raw.endswith(suffix):
            number, factor = raw[: -len(suffix)], multiplier
            break
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 24GiB, 512MiB or a byte count)") from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return int(value * factor)


@dataclass(frozen=True)
class Resources:
    """CPU in millicores and memory in bytes (integers: no float drift)."""

    millicpu: int
    memory: int

    @classmethod
    def of_tier(cls, machine: str, shards: int = 1) -> Resources:
        tier = MACHINES[machine]
        return cls(round(tier.vcpu * 1000) * shards, tier.memory_bytes * shards)

    @classmethod
    def of_host(cls, cpus: float, memory: int) -> Resources:
        return cls(round(cpus * 1000), memory)

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.millicpu + other.millicpu, self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.millicpu - other.millicpu, self.memory - other.memory)

    def fits_in(self, other: Resources) -> bool:
        return self.millicpu <= other.millicpu and self.memory <= other.memory

    def how_many_fit(self, free: Resources) -> int:
        """How many units of ``self`` fit in ``free``."""
        if self.millicpu <= 0 or self.memory <= 0:
            return 0
        return max(0, min(free.millicpu // self.millicpu, free.memory // self.memory))

    def text(self) -> str:
        return f"{format_cpus(self.millicpu / 1000)} / {format_bytes(max(self.memory, 0))}"


ZERO = Resources(0, 0)
