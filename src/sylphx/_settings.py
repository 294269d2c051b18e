"""Configuration from ``SYLPHX_*`` environment variables, read once and validated."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._errors import ValidationError
from ._machines import parse_bytes


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _bad(var: str, value: str, fix: str) -> ValidationError:
    return ValidationError(
        f"{var}={value!r} is not valid. Fix: {fix}",
        details=[{"field": var, "rule": "invalid value", "fix": fix}],
    )


def home_dir() -> Path:
    """``SYLPHX_HOME``, default ``~/.sylphx``."""
    return Path(os.environ.get("SYLPHX_HOME") or Path.home() / ".sylphx").expanduser().resolve()


def socket_path(home: Path) -> Path:
    """The embedded control plane's Unix socket for ``home`` (kept under the 108-byte limit)."""
    path = home / "control.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sylphx-{digest}.sock"


@dataclass(frozen=True)
class Settings:
    """Server settings. Build with :meth:`from_env`; tests may construct directly."""

    home: Path
    database_url: str
    executor: str = "local"
    local_cpus: float = float(os.cpu_count() or 1)
    local_memory: int = 0
    kill_grace_seconds: float = 10.0
    reconcile_interval: float = 0.5
    ray_address: str | None = None  # None: "auto" (the cluster this host belongs to)
    ray_gang_strategy: str = "SPREAD"
    ray_volume_root: Path | None = None  # a filesystem every Ray node mounts at this path

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def volumes_dir(self) -> Path:
        if self.executor == "ray" and self.ray_volume_root is not None:
            return self.ray_volume_root
        return self.home / "volumes"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("SYLPHX_HOME") or Path.home() / ".sylphx").expanduser().resolve()
        db = env.get("SYLPHX_DATABASE_URL") or f"sqlite:///{home / 'sylphx.db'}"
        executor = env.get("SYLPHX_EXECUTOR", "local")
        if executor not in ("local", "ray"):
            raise _bad("SYLPHX_EXECUTOR", executor, "use 'local' or 'ray'")
        strategy = env.get("SYLPHX_RAY_GANG_STRATEGY", "SPREAD").upper()
        if strategy not in ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"):
            raise _bad(
                "SYLPHX_RAY_GANG_STRATEGY",
                strategy,
                "use SPREAD, PACK, STRICT_SPREAD or STRICT_PACK",
            )
        volume_root = env.get("SYLPHX_RAY_VOLUME_ROOT")
        cpus_text = env.get("SYLPHX_LOCAL_CPUS")
        try:
            cpus = float(cpus_text) if cpus_text else float(os.cpu_count() or 1)
            if cpus <= 0:
                raise ValueError
        except ValueError:
            raise _bad(
                "SYLPHX_LOCAL_CPUS", str(cpus_text), "give a positive number of vCPUs, e.g. 8"
            ) from None
        mem_text = env.get("SYLPHX_LOCAL_MEMORY")
        try:
            memory = parse_bytes(mem_text) if mem_text else _host_memory()
        except ValueError:
            raise _bad(
                "SYLPHX_LOCAL_MEMORY", str(mem_text), "give a size such as 16GiB or 512MiB"
            ) from None
        grace_text = env.get("SYLPHX_KILL_GRACE_SECONDS", "10")
        interval_text = env.get("SYLPHX_RECONCILE_INTERVAL", "0.5")
        try:
            grace = float(grace_text)
            if grace < 0:
                raise ValueError
        except ValueError:
            raise _bad(
                "SYLPHX_KILL_GRACE_SECONDS", grace_text, "give seconds >= 0, e.g. 10"
            ) from None
        try:
            interval = float(interval_text)
            if interval <= 0:
                raise ValueError
        except ValueError:
            raise _bad(
                "SYLPHX_RECONCILE_INTERVAL", interval_text, "give seconds > 0, e.g. 0.5"
            ) from None
        return cls(
            home=home,
            database_url=db,
            executor=executor,
            local_cpus=cpus,
            local_memory=memory,
            kill_grace_seconds=grace,
            reconcile_interval=interval,
            ray_address=env.get("SYLPHX_RAY_ADDRESS") or None,
            ray_gang_strategy=strategy,
            ray_volume_root=Path(volume_root).expanduser().resolve() if volume_root else None,
        )
