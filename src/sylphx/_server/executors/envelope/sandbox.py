"""The per-shard sandbox: bubblewrap, run as an unprivileged user, in new user, pid,
ipc, uts, cgroup, mount and network namespaces, under a seccomp filter.

The root is a tmpfs holding read-only binds of the base's top-level entries (the
host's ``/``, or an image's rootfs), so mount points for volumes can be created
without touching the base. /tmp is private and only the run's volumes are writable.
The control plane's paths are hidden *after* every other bind, so no working
directory, toolchain or volume bound below or above them can show them again, and
the host's cgroup tree is not visible. See the README's envelope section for what a
shard can and cannot do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sylphx._core.errors import ExecutorError
from sylphx._server.executors.base import Mount
from sylphx._server.executors.local.netstack import BLOCK_FD, ENV_FD, INFO_FD, SECCOMP_FD
from sylphx._server.executors.local.processes import PRIVATE, private_roots

_SKIP = {"proc", "dev", "tmp"}
NEWROOT = "/.sylphx-root"  # where the first stage builds an image's root
NetworkMode = Literal["slirp4netns", "host"]


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
class Policy:
    """What the operator decides for every shard on a host, whatever its spec says."""

    hide: Sequence[Path] = ()  # host paths no shard sees (an empty tmpfs, or /dev/null)
    network: NetworkMode = "slirp4netns"  # how a shard with network: true gets one
    uid: int = 64000  # the host uid/gid a shard runs as when the control plane is root
    gid: int = 64000
    egress: tuple[int, int] = (64001, 64001)  # and a registry's skopeo (.egress), uid/gid
    seccomp: bool = True  # the filter comes in at SECCOMP_FD (the supervisor opens it)

    def identity(self) -> list[str]:
        """argv that drops to the shard's uid/gid, with no supplementary groups and no
        capabilities left in any set, when running as root; [] otherwise (a non-root
        control plane's shards run as its own uid)."""
        if os.geteuid() != 0:
            return []
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]


@dataclass(frozen=True)
class Sandbox:
    """What one shard may see."""

    base: Path = Path("/")  # host root, or an image's rootfs
    mounts: Sequence[Mount] = ()
    network: bool = True
    working_dir: str | None = None
    extra_ro: Sequence[Path] = field(default_factory=tuple)
    die_with_parent: bool = False  # a Ray task's shard: gone with the worker that ran it
    policy: Policy = field(default_factory=Policy)

    @property
    def slirp(self) -> bool:
        """Whether the shard's network comes from slirp4netns (the INFO/BLOCK fds)."""
        return self.network and self.policy.network == "slirp4netns"

    def argv(self) -> list[str]:
        """``bwrap … -- [setpriv … -- bwrap … --]`` (the command follows).

        A root control plane's shard gets two stages: bubblewrap as root builds the
        namespaces and the file system (it can bind what root can read, e.g. a toolchain
        under ``/root``); ``setpriv`` then drops to the shard's uid with no capabilities,
        and a second bubblewrap, as that user, makes the user namespace (no capabilities,
        no further user namespaces) and loads the seccomp filter. A non-root control
        plane's shard is one stage, as its own uid."""
        inner = self.policy.identity()
        user = [
            "--unshare-user",
            "--disable-userns",  # and no user namespaces made inside it
            "--cap-drop",
            "ALL",
        ]
        handshake = ["--block-fd", str(BLOCK_FD)] if self.slirp else []
        args = [bwrap_path(), *([] if inner else user), *self._namespaces()]
        if not inner:
            args += handshake
        host = self.base == Path("/")
        private = private_roots() if host else ()
        # An image's root is built at NEWROOT, beside the host's tools the next stage runs
        # (setpriv, bwrap), which then makes it the shard's "/".
        root = NEWROOT if inner and not host else ""
        if root:
            args += _top_level(Path("/"), "", private_roots())
            args += ["--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]  # bwrap works there
            args += ["--perms", "0755", "--dir", root]
        args += _top_level(self.base, root, private)
        args += ["--proc", f"{root}/proc", "--dev", f"{root}/dev"]
        args += ["--perms", "1777", "--tmpfs", f"{root}/tmp"]
        extra = [path for path in self.extra_ro if host and _shows(path, self.policy.hide)]
        for path in extra:  # e.g. the run's working directory, even under /tmp
            args += [*_parents(path, private), "--ro-bind", str(path), str(path)]
        for mount in self.mounts:
            _check_mount_point(self.base, mount.target)
            if mount.read_only:  # the platform's file, in a folder the shard may search
                parent = os.path.dirname(mount.target)
                args += ["--perms", "0755", "--dir", f"{root}{parent}"]
                args += ["--ro-bind", str(mount.source), f"{root}{mount.target}"]
            else:
                args += ["--bind", str(mount.source), f"{root}{mount.target}"]
        if host:  # last, so that nothing bound above can show them again
            args += _hides(self.policy.hide, extra)
            if os.path.isdir("/sys/fs/cgroup"):
                args += ["--tmpfs", "/sys/fs/cgroup"]
        args += ["--remount-ro", "/"]  # the root itself is read-only once mounts are placed
        if inner:
            # --dev-bind: the first stage's /dev (a plain --bind would make it nodev)
            args += ["--", *inner, bwrap_path(), *user, *handshake]
            args += ["--dev-bind", root or "/", "/"]
        if self.working_dir:
            args += ["--chdir", self.working_dir]
        if self.policy.seccomp:
            args += ["--seccomp", str(SECCOMP_FD)]
        args += ["--args", str(ENV_FD)]  # the shard's environment, only for the shard
        return [*args, "--"]

    def _namespaces(self) -> list[str]:
        """The first stage's namespaces, and its half of the network hand-off: it tells
        the sandbox's pid (its network namespace); the last stage waits for slirp4netns
        before it runs the command (see netstack.Net.attach)."""
        args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup"]
        args += ["--hostname", "sylphx-shard", "--tmpfs", "/"]
        if not self.network or self.policy.network != "host":
            args.append("--unshare-net")
        if self.slirp:
            args += ["--info-fd", str(INFO_FD)]
        if self.die_with_parent:
            args.append("--die-with-parent")
        return args


def _top_level(base: Path, root: str, private: Sequence[Path]) -> list[str]:
    """Read-only binds of ``base``'s top-level entries at ``root`` (but /proc, /dev, /tmp
    and the private ones), its symlinks as they are."""
    args: list[str] = []
    for entry in sorted(os.listdir(base)):
        src = base / entry
        if entry in _SKIP or src in private:
            continue  # what the shard needs from a private one is bound back (extra_ro)
        if src.is_symlink():
            args += ["--symlink", os.readlink(src), f"{root}/{entry}"]
        elif src.exists():
            args += ["--ro-bind", str(src), f"{root}/{entry}"]
    return args


def _parents(path: Path, private: Sequence[Path]) -> list[str]:
    """Directories between a private root and a path bound back below it, made
    searchable (0755) for the shard's unprivileged user."""
    root = next((r for r in private if path.is_relative_to(r) and r != path), None)
    if root is None:
        return []
    args: list[str] = []
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = current / part
        args += ["--perms", "0755", "--dir", str(current)]
    if root != PRIVATE:
        args = ["--perms", "0755", "--dir", str(root), *args]
    return args


def _shows(path: Path, hide: Sequence[Path]) -> bool:
    """Whether ``path`` may be bound back into a shard: it exists, and neither it nor what
    it leads to (bwrap binds a link's target) is or lies under a hidden path. A folder
    that holds a hidden path may (that path is covered again, :func:`_hides`), unless it
    is reached through a link. Whatever
    named it -- a working directory, a PATH entry, a link a tenant planted in its own
    volume -- nothing of the home (other tenants' volumes and logs) comes back this way."""
    if not path.exists():
        return False
    real = Path(os.path.realpath(path))
    if any(p.is_relative_to(h) for p in (path, real) for h in hide):
        return False
    # bwrap binds a link's target at the link's name, where _hides would not cover what
    # the target holds: a link to a folder around a hidden path is not bound at all
    return real == path or not any(h.is_relative_to(real) for h in hide)


def _hides(hide: Sequence[Path], extra: Sequence[Path]) -> list[str]:
    """Cover each hidden path the shard could otherwise see: a directory with an empty
    read-only tmpfs, a file (or socket) with /dev/null. Under the private /tmp only what
    a bind brought back is visible."""
    args: list[str] = []
    for path in hide:
        if not os.path.lexists(path) or any(p != path and path.is_relative_to(p) for p in hide):
            continue  # not there, or covered with its parent
        hidden_anyway = any(path.is_relative_to(r) for r in private_roots())
        if hidden_anyway and not any(path.is_relative_to(e) for e in extra):
            continue
        if path.is_dir():
            args += ["--perms", "0555", "--tmpfs", str(path)]
        else:
            args += ["--ro-bind", "/dev/null", str(path)]
    return args


def _check_mount_point(base: Path, target: str) -> None:
    """A mount path inside an existing read-only directory of the base cannot be created;
    one through a symbolic link of the base (an image's ``/x -> /oldroot/etc``) would be
    created wherever the link points, by the first stage, as root: refused."""
    rel = Path(target).relative_to("/")
    if rel.parts[0] in _SKIP:
        return  # the sandbox's own tmpfs (or /proc, /dev), whatever the base holds there
    parent = base
    for i, part in enumerate(rel.parts):
        here = parent / part
        if here.is_symlink():
            shown = "/" + str(here.relative_to(base))
            raise ExecutorError(
                f"mountPath {target}: {shown} is a symbolic link in the shard's root, and a"
                " mount point is never made through one. Fix: mount at a path without"
                " symbolic links (e.g. /cache or /data)."
            )
        if i == len(rel.parts) - 1:
            break
        if not here.exists():
            return  # created inside the sandbox's tmpfs root or a tmpfs below it
        parent = here
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
    granted secrets (never PATH: the one checked at submit is the env's) and the
    platform's SYLPHX_* variables; nothing from the server."""
    base = dict(image_env) if image_env is not None else {}
    base.setdefault(
        "PATH", host_path or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    base.setdefault("HOME", "/tmp")
    base.setdefault("LANG", "C.UTF-8")
    mine = {name: value for name, value in secrets.items() if name != "PATH"}  # (see limits)
    return {**base, **run_env, **mine, **platform}
