"""The per-shard sandbox: bubblewrap with its own pid, ipc, uts and mount namespaces.

The root is a tmpfs holding read-only binds of the base's top-level entries (the
host's ``/``, or an image's rootfs), so mount points for volumes can be created
without touching the base. /tmp is private, the control plane's data directory is
hidden, and only the run's volumes are writable. The network stays on unless the
run turns it off.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..._errors import ExecutorError
from .base import Mount

_SKIP = {"proc", "dev", "tmp"}


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise ExecutorError(
            "the shard sandbox needs bubblewrap (bwrap). Fix: install the Debian package"
            " 'bubblewrap' (make system-deps), or set SYLPHX_SANDBOX=off to run shards"
            " unsandboxed (not for shared machines)."
        )
    return path


@dataclass(frozen=True)
class Sandbox:
    """What one shard may see."""

    base: Path = Path("/")  # host root, or an image's rootfs
    mounts: Sequence[Mount] = ()
    hide: Sequence[Path] = ()  # host directories replaced by an empty tmpfs
    network: bool = True
    working_dir: str | None = None
    extra_ro: Sequence[Path] = field(default_factory=tuple)
    die_with_parent: bool = False  # a Ray task's shard: gone with the worker that ran it

    def argv(self) -> list[str]:
        """``bwrap …  --`` (the command follows)."""
        args = [
            bwrap_path(),
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            "sylphx-shard",
            "--tmpfs",
            "/",
        ]
        if not self.network:
            args.append("--unshare-net")
        if self.die_with_parent:
            args.append("--die-with-parent")
        for entry in sorted(os.listdir(self.base)):
            if entry in _SKIP:
                continue
            src = self.base / entry
            if src.is_symlink():
                args += ["--symlink", os.readlink(src), f"/{entry}"]
            elif src.exists():
                args += ["--ro-bind", str(src), f"/{entry}"]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        host = self.base == Path("/")
        for path in self.hide:
            if host and path.exists():
                args += ["--tmpfs", str(path)]
        for path in self.extra_ro:  # e.g. the run's working directory, even under /tmp
            if host and path.exists():
                args += ["--ro-bind", str(path), str(path)]
        for mount in self.mounts:
            _check_mount_point(self.base, mount.target)
            args += ["--bind", str(mount.source), mount.target]
        args += ["--remount-ro", "/"]  # the root itself is read-only once mounts are placed
        if self.working_dir:
            args += ["--chdir", self.working_dir]
        return [*args, "--"]


def _check_mount_point(base: Path, target: str) -> None:
    """A mount path inside an existing read-only directory of the base cannot be created."""
    rel = Path(target).relative_to("/")
    parent = base
    for part in rel.parts[:-1]:
        parent = parent / part
        if not parent.exists():
            return  # created inside the sandbox's tmpfs root or a tmpfs below it
    if parent != base and not (parent / rel.parts[-1]).exists():
        raise ExecutorError(
            f"volume mountPath {target}: {parent.relative_to(base) if parent != base else '/'}"
            " is a read-only directory of the shard's root, so the mount point cannot be"
            " created. Fix: mount at a path whose parent does not exist in the root (e.g."
            " /cache or /data) or at an existing empty directory."
        )


def clean_env(
    *,
    platform: dict[str, str],
    run_env: dict[str, str],
    secrets: dict[str, str],
    image_env: dict[str, str] | None,
    host_path: str | None,
) -> dict[str, str]:
    """The shard's whole environment: image (or minimal host) basics, the run's env, its
    granted secrets and the platform's SYLPHX_* variables; nothing from the server."""
    base = dict(image_env) if image_env is not None else {}
    base.setdefault(
        "PATH", host_path or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    base.setdefault("HOME", "/tmp")
    base.setdefault("LANG", "C.UTF-8")
    return {**base, **run_env, **secrets, **platform}
