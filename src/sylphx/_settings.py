"""Configuration from ``SYLPHX_*`` environment variables, read once and validated."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sylphx._core.errors import ValidationError
from sylphx._core.machines import parse_bytes

T = TypeVar("T")


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


def _number(env: dict[str, str], var: str, default: str, *, allow_zero: bool) -> float:
    """A number of seconds from ``env[var]`` (>= 0, or > 0), or a ValidationError naming it."""
    text = env.get(var, default)
    try:
        value = float(text)
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError
    except ValueError:
        bound = ">= 0" if allow_zero else "> 0"
        raise _bad(var, text, f"give seconds {bound}, e.g. {default}") from None
    return value


def _choice(
    env: dict[str, str],
    var: str,
    default: str,
    allowed: tuple[str, ...],
    fix: str,
    *,
    upper: bool = False,
) -> str:
    """``env[var]`` (case-folded) when it is one of ``allowed``; else a ValidationError."""
    text = env.get(var, default)
    text = text.upper() if upper else text.lower()
    if text not in allowed:
        raise _bad(var, text, fix)
    return text


def _parsed(
    env: dict[str, str],
    var: str,
    parse: Callable[[str], T],
    fix: str,
    default: str | None = None,
) -> T:
    """``parse(env[var])`` (ValueError: a ValidationError naming ``var``); unset and no
    ``default``: ``parse("")``, the host's own value."""
    text = env.get(var) or default or ""
    try:
        return parse(text)
    except ValueError:
        raise _bad(var, text, fix) from None


def _positive(text: str) -> float:
    value = float(text) if text else float(os.cpu_count() or 1)
    if value <= 0:
        raise ValueError(text)
    return value


def _memory(text: str) -> int:
    return parse_bytes(text) if text else _host_memory()


def _size_from_4k(text: str) -> int:
    value = parse_bytes(text)
    if value < 4096:
        raise ValueError(text)
    return value


def _count(env: dict[str, str], var: str, default: int) -> int:
    """A whole number >= 1 from ``env[var]``, or a ValidationError naming it."""
    text = env.get(var) or str(default)
    if not text.isdigit() or int(text) < 1:
        raise _bad(var, text, f"give a whole number of at least 1, e.g. {default}")
    return int(text)


def _host_id(env: dict[str, str], var: str, default: int) -> int:
    """An unprivileged numeric uid or gid from ``env[var]`` (never 0)."""
    text = env.get(var, str(default))
    if not text.isdigit() or not 0 < int(text) < 2**32 - 1:
        raise _bad(var, text, f"give an unprivileged numeric id (not 0), e.g. {default}")
    return int(text)


def _token(env: dict[str, str], var: str) -> str | None:
    """A bearer token: at least 16 printable ASCII characters, no spaces (never echoed)."""
    text = env.get(var) or None
    if text is not None and not (len(text) >= 16 and all("!" <= c <= "~" for c in text)):
        fix = "give at least 16 printable ASCII characters, no spaces (e.g. openssl rand -hex 32)"
        raise _bad(var, "<hidden>", fix)
    return text


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
    preemption_grace_seconds: float = 30.0  # SIGTERM -> SIGKILL for a preempted shard
    max_preemptions_per_index: int = 10  # beyond it a shard is no longer chosen as a victim
    sandbox: bool = True  # bubblewrap per shard (SYLPHX_SANDBOX=off to opt out)
    unenforced_tiers: bool = False  # run without cgroups (SYLPHX_UNENFORCED_TIERS=1)
    bill_preemptions: bool = False  # bill windows the platform preempted (SYLPHX_BILL_PREEMPTIONS)
    secrets_key: str | None = None  # Fernet key (SYLPHX_SECRETS_KEY); else a generated file
    image_scanner: str | None = None  # SYLPHX_IMAGE_SCANNER: CMD REF DIGEST ROOTFS, 0 = admit
    # SYLPHX_PRIVATE_REGISTRIES: registries at private addresses runs may name (comma-separated)
    private_registries: tuple[str, ...] = ()
    ray_address: str | None = None  # None: "auto" (the cluster this host belongs to)
    ray_gang_strategy: str = "SPREAD"
    ray_volume_root: Path | None = None  # a filesystem every Ray node mounts at this path
    ray_image_cache: Path = Path("/var/cache/sylphx/images")  # where each node unpacks images
    auth_cache_seconds: float = 1.0  # a revoked API key is refused within this; 0 = no cache
    max_log_bytes: int = 1 << 30  # SYLPHX_MAX_LOG_BYTES: per stream of one attempt
    # SYLPHX_IMAGE_MAX_UNPACKED_BYTES: an image's files unpacked (images/layers.py)
    image_max_unpacked_bytes: int = 64 << 30
    shard_network: str = "slirp4netns"  # SYLPHX_SHARD_NETWORK: or "host" (unsafe, shared)
    shard_uid: int = 64000  # SYLPHX_SHARD_UID/GID: the host ids a shard runs as (when root)
    shard_gid: int = 64000
    # SYLPHX_EGRESS_UID/GID: the host ids a registry's skopeo runs as (executors/envelope/egress)
    egress_uid: int = 64001
    egress_gid: int = 64001
    shard_hide: tuple[Path, ...] = ()  # SYLPHX_SHARD_HIDE: more host paths shards never see
    # followed log streams (GET .../logs?follow=true) open at once in one API process
    max_log_streams_per_org: int = 32  # SYLPHX_MAX_LOG_STREAMS_PER_ORG: per org
    max_log_streams: int = 512  # SYLPHX_MAX_LOG_STREAMS: all orgs together
    # SYLPHX_METRICS_TOKEN: the bearer token /metrics asks for; unset: loopback clients only
    metrics_token: str | None = None

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def volumes_dir(self) -> Path:
        if self.executor == "ray" and self.ray_volume_root is not None:
            return self.ray_volume_root
        return self.home / "volumes"

    @property
    def local_token_file(self) -> Path:
        """The embedded default's API key (mode 0600), read by the local CLI and SDK."""
        return self.home / "local-token"

    @property
    def secrets_key_file(self) -> Path:
        return self.home / "secrets.key"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    def hidden_paths(self) -> tuple[Path, ...]:
        """Host paths no shard may see, whatever its spec says: the home (store, keys,
        state, logs, volumes, socket), the volume root and a SQLite store kept elsewhere,
        the control plane's socket, Ray's session folder on Ray and what the operator adds
        (``SYLPHX_SHARD_HIDE``).
        Resolved (symlinks, ``//``, ``..``), so a spec's path can be checked against them."""
        paths = [self.home, self.volumes_dir, self.logs_dir, self.secrets_key_file]
        paths.append(socket_path(self.home))
        if self.database_url.startswith("sqlite:///"):  # with its WAL, index and journal
            db = Path(self.database_url.removeprefix("sqlite:///"))
            paths += [db.with_name(db.name + tail) for tail in ("", "-wal", "-shm", "-journal")]
        if self.executor == "ray":  # a node's Ray session (its sockets, every log) and images
            paths += [Path(tempfile.gettempdir()) / "ray", self.ray_image_cache]
        paths.extend(self.shard_hide)
        out: dict[Path, None] = {}
        for path in paths:
            out[Path(os.path.realpath(path))] = None
        return tuple(out)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """The settings ``env`` (default: this process's environment) gives; a bad value
        is a ValidationError naming the variable and the fix."""
        env = dict(os.environ if env is None else env)
        home = Path(env.get("SYLPHX_HOME") or Path.home() / ".sylphx").expanduser().resolve()
        db = env.get("SYLPHX_DATABASE_URL") or f"sqlite:///{home / 'sylphx.db'}"
        executor = _choice(
            env, "SYLPHX_EXECUTOR", "local", ("local", "ray"), "use 'local' or 'ray'"
        )
        strategy = _choice(
            env,
            "SYLPHX_RAY_GANG_STRATEGY",
            "SPREAD",
            ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"),
            "use SPREAD, PACK, STRICT_SPREAD or STRICT_PACK",
            upper=True,
        )
        volume_root = env.get("SYLPHX_RAY_VOLUME_ROOT")
        cpus = _parsed(
            env, "SYLPHX_LOCAL_CPUS", _positive, "give a positive number of vCPUs, e.g. 8"
        )
        memory = _parsed(env, "SYLPHX_LOCAL_MEMORY", _memory, "give a size such as 16GiB")
        grace = _number(env, "SYLPHX_KILL_GRACE_SECONDS", "10", allow_zero=True)
        interval = _number(env, "SYLPHX_RECONCILE_INTERVAL", "0.5", allow_zero=False)
        preempt_grace = _number(env, "SYLPHX_PREEMPTION_GRACE_SECONDS", "30", allow_zero=True)
        auth_cache = _number(env, "SYLPHX_AUTH_CACHE_SECONDS", "1", allow_zero=True)
        ceiling_text = env.get("SYLPHX_MAX_PREEMPTIONS_PER_INDEX", "10")
        if not ceiling_text.isdigit():
            raise _bad(
                "SYLPHX_MAX_PREEMPTIONS_PER_INDEX", ceiling_text, "give a whole number, e.g. 10"
            )
        sandbox_text = _choice(
            env, "SYLPHX_SANDBOX", "on", ("on", "off", "1", "0", "true", "false"), "use on or off"
        )
        max_log_bytes = _parsed(
            env,
            "SYLPHX_MAX_LOG_BYTES",
            _size_from_4k,
            "give a size of at least 4KiB, e.g. 1GiB",
            "1GiB",
        )
        max_unpacked = _parsed(
            env,
            "SYLPHX_IMAGE_MAX_UNPACKED_BYTES",
            _size_from_4k,
            "give a size of at least 4KiB, e.g. 64GiB",
            "64GiB",
        )
        network = _choice(
            env,
            "SYLPHX_SHARD_NETWORK",
            "slirp4netns",
            ("slirp4netns", "host"),
            "use slirp4netns (the default: shards get their own network namespace) or"
            " host (unsafe on shared machines: shards reach the host's loopback)",
        )
        ids = {var: _host_id(env, var, 64000) for var in ("SYLPHX_SHARD_UID", "SYLPHX_SHARD_GID")}
        ids |= {
            var: _host_id(env, var, 64001) for var in ("SYLPHX_EGRESS_UID", "SYLPHX_EGRESS_GID")
        }
        for kind in ("UID", "GID"):  # a registry's skopeo is not one of the tenants' shards
            if ids[f"SYLPHX_EGRESS_{kind}"] == ids[f"SYLPHX_SHARD_{kind}"]:
                var, text = f"SYLPHX_EGRESS_{kind}", str(ids[f"SYLPHX_EGRESS_{kind}"])
                raise _bad(var, text, f"give an id other than SYLPHX_SHARD_{kind}'s")
        hide_text = env.get("SYLPHX_SHARD_HIDE", "")
        hide = tuple(Path(p) for p in hide_text.split(":") if p)
        if not all(path.is_absolute() for path in hide):
            raise _bad("SYLPHX_SHARD_HIDE", hide_text, "give absolute paths joined by ':'")
        return cls(
            metrics_token=_token(env, "SYLPHX_METRICS_TOKEN"),
            max_log_bytes=max_log_bytes,
            image_max_unpacked_bytes=max_unpacked,
            max_log_streams_per_org=_count(env, "SYLPHX_MAX_LOG_STREAMS_PER_ORG", 32),
            max_log_streams=_count(env, "SYLPHX_MAX_LOG_STREAMS", 512),
            shard_network=network,
            shard_uid=ids["SYLPHX_SHARD_UID"],
            shard_gid=ids["SYLPHX_SHARD_GID"],
            egress_uid=ids["SYLPHX_EGRESS_UID"],
            egress_gid=ids["SYLPHX_EGRESS_GID"],
            shard_hide=hide,
            secrets_key=env.get("SYLPHX_SECRETS_KEY") or None,
            image_scanner=env.get("SYLPHX_IMAGE_SCANNER") or None,
            private_registries=tuple(
                name.strip()
                for name in env.get("SYLPHX_PRIVATE_REGISTRIES", "").split(",")
                if name.strip()
            ),
            sandbox=sandbox_text in ("on", "1", "true"),
            unenforced_tiers=env.get("SYLPHX_UNENFORCED_TIERS", "") in ("1", "true", "on"),
            bill_preemptions=env.get("SYLPHX_BILL_PREEMPTIONS", "") in ("1", "true", "on"),
            preemption_grace_seconds=preempt_grace,
            max_preemptions_per_index=int(ceiling_text),
            home=home,
            database_url=db,
            executor=executor,
            local_cpus=cpus,
            local_memory=memory,
            kill_grace_seconds=grace,
            reconcile_interval=interval,
            auth_cache_seconds=auth_cache,
            ray_address=env.get("SYLPHX_RAY_ADDRESS") or None,
            ray_gang_strategy=strategy,
            ray_volume_root=Path(volume_root).expanduser().resolve() if volume_root else None,
            ray_image_cache=_absolute(env, "SYLPHX_RAY_IMAGE_CACHE", "/var/cache/sylphx/images"),
        )


def _absolute(env: dict[str, str], name: str, default: str) -> Path:
    """An absolute path setting (resolved: it may be one the shards are kept from)."""
    value = env.get(name) or default
    if not value.startswith("/"):
        raise _bad(name, value, "give an absolute path")
    return Path(os.path.realpath(value))
