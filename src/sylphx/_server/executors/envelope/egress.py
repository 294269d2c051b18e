"""Registry traffic from a network of its own: the control plane's skopeo reaches public
addresses only, checked connection by connection.

An image reference names a registry the control plane (root, on the host's network)
connects to. ``images.reach`` refuses a registry whose *name* is private before anything
is sent, but what skopeo then connects to is the registry's to decide: a redirect (a blob
"moved" to ``http://169.254.169.254/...``, the cloud's metadata service, or to
``127.0.0.1:5432``), a token ``realm`` URL, or a name that resolves again to another
address (DNS rebinding) made root send requests into the host and its private networks
(left noted by the previous reviews). So a registry's skopeo runs as a shard's network
does (:mod:`..local.netstack`): in a network namespace of its own (bubblewrap), given a
way out by slirp4netns without the host's loopback, with ``prohibit`` routes for every
non-public range (:data:`PRIVATE_NETWORKS`) and the host's own addresses; DNS goes to
slirp4netns's forwarder. The rest of the host it sees read-only, but for the folders it
writes (its work folder), and not at all what ``hide`` names (the home, its keys). And it
runs as ``user`` (SYLPHX_EGRESS_UID/GID), with no capabilities and no groups, never as
root: a skopeo a registry's answer exploited could otherwise read every root-owned file
the hidden paths miss (root's own files need no capability). Its work folder is that
user's, and what it holds stays the registry's: the image store reads it as untrusted
(never writing into it) and removes it (``images.room.remove_tree``).

A registry the operator lists in ``SYLPHX_PRIVATE_REGISTRIES`` (an in-house one) is
contacted from the host's own network, as before; so is every registry when the control
plane is not root or lacks bubblewrap or slirp4netns (a development set-up).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from sylphx._core.errors import StorageFull
from sylphx._server.executors.local.cgroups import EGRESS_PREFIX as CGROUP_PREFIX
from sylphx._server.executors.local.cgroups import Cgroups, ShardCgroup
from sylphx._server.executors.local.netstack import Net, Networks, slirp4netns_path
from sylphx._server.executors.local.processes import PRIVATE, private_roots
from sylphx._server.images.room import Watch, communicate, reap, run_watched

from .sandbox import Policy, _hides, _parents, bwrap_path

__all__ = ["PRIVATE_NETWORKS", "TIER", "run_confined"]

log = logging.getLogger("sylphx.images")

PRIVATE_NETWORKS: Networks = (  # what is not the public internet (RFC 6890), and Alibaba's
    ("0.0.0.0", 8),
    ("10.0.0.0", 8),  # slirp4netns's own 10.0.2.0/24 (gateway, DNS) is more specific
    ("100.64.0.0", 10),
    ("100.100.100.200", 32),
    ("168.63.129.16", 32),  # Azure's WireServer (public, but the host's to ask)
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("172.16.0.0", 12),
    ("192.0.0.0", 24),
    ("192.0.2.0", 24),
    ("192.168.0.0", 16),
    ("198.18.0.0", 15),
    ("198.51.100.0", 24),
    ("203.0.113.0", 24),
    ("224.0.0.0", 4),
    ("240.0.0.0", 4),
)
_RESOLVER = b"nameserver 10.0.2.3\n"  # slirp4netns's DNS forwarder
_SECRETS = (Path("/etc/shadow"), Path("/etc/gshadow"), Path("/root"))


# A registry's skopeo gets a machine tier of its own, as a shard does: its memory (the
# tmpfs of its /tmp is charged to it too, and bubblewrap cannot size one), CPU and pids.
# Without it, a skopeo exploited by a registry's answer could fill the host's memory
# until the kernel's OOM killer chose the control plane (found by a review).
TIER = "standard"
GONE_SECONDS = 1.0  # how long its cgroup's removal is retried (then: at the next pull)


@functools.cache
def _cgroups() -> Cgroups:
    """This process's one view of the cgroups: its :meth:`Cgroups.release` keeps a group
    the kernel still holds past GONE_SECONDS, which its :meth:`Cgroups.sweep` at the next
    pull removes."""
    return Cgroups()


def _cgroup() -> ShardCgroup | None:
    """The sandbox's cgroup, or None where cgroups cannot be used (as for shards, with
    SYLPHX_UNENFORCED_TIERS=1: a development set-up; said in the log). Named after this
    process, so the groups a control plane killed mid-pull left are removed by the next
    (:func:`_sweep_gone`)."""
    cgroups = _cgroups()
    try:
        for base in cgroups.bases:  # (made by a local executor's start; a Ray node's too)
            base.mkdir(parents=True, exist_ok=True)
        cgroups.sweep()
        _sweep_gone(cgroups)
        name = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:16]}"
        return cgroups.create(name, TIER)
    except OSError as exc:
        log.warning("a registry's skopeo runs without a memory ceiling: %s", exc)
        return None


def _sweep_gone(cgroups: Cgroups) -> None:
    """Remove the egress groups of control planes that are gone."""
    names: list[str] = []
    with contextlib.suppress(OSError), os.scandir(cgroups.bases[0]) as entries:
        names = [e.name for e in entries if e.name.startswith(CGROUP_PREFIX)]
    for name in names:
        pid = name.removeprefix(CGROUP_PREFIX).partition("-")[0]
        group = cgroups.existing(name)
        if group is not None and (not pid.isdigit() or not os.path.exists(f"/proc/{pid}")):
            group.kill_all()
            group.remove()


def confinable() -> bool:
    """Whether this host can confine a registry's skopeo (see the module)."""
    return os.geteuid() == 0 and slirp4netns_path() is not None and _bwrap() is not None


def _bwrap() -> str | None:
    try:
        return bwrap_path()
    except Exception:
        return None


def run_confined(
    argv: Sequence[str],
    writable: Sequence[Path],
    timeout: float,
    *,
    hide: Sequence[Path] = (),
    user: tuple[int, int] | None = None,
    look: Watch = lambda: None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (a skopeo) as :mod:`this module <.egress>` says, ``writable`` the
    folders it may write (given to ``user``), ``hide`` (and the host's password hashes)
    covered, as ``user`` (uid, gid; None: root without capabilities); its output
    captured. TimeoutExpired after ``timeout`` s, ``look``'s error once it finds the disk
    short (:mod:`images.room <sylphx._server.images.room>`): the whole sandbox is killed."""
    slirp, bwrap = slirp4netns_path(), _bwrap()
    if os.geteuid() != 0 or slirp is None or bwrap is None:
        return run_watched(argv, timeout, look)
    writable = [Path(os.path.realpath(folder)) for folder in writable]  # (bound as such)
    for folder in writable:
        if user is not None:
            os.chown(folder, *user)  # its own (see the module)
    return _run(argv, writable, timeout, hide, user, look, slirp, bwrap)


def _run(
    argv: Sequence[str],
    writable: Sequence[Path],
    timeout: float,
    hide: Sequence[Path],
    user: tuple[int, int] | None,
    look: Watch,
    slirp: str,
    bwrap: str,
) -> subprocess.CompletedProcess[bytes]:
    with tempfile.NamedTemporaryFile(prefix="sylphx-resolv-") as resolver:
        resolver.write(_RESOLVER)
        resolver.flush()
        os.chmod(resolver.name, 0o644)
        net = Net()
        args = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
        args += ["--info-fd", str(net.info_w)]
        args += _filesystem(resolver.name, writable, hide, user)
        # a second stage that waits for the network: bubblewrap's first one has then set
        # its namespaces up, its loopback included (netstack.Net.attach waits for it); then
        # setpriv drops to ``user`` with every capability set empty
        wait = f'head -c1 /proc/self/fd/{net.block_r} >/dev/null; exec "$@"'
        drop = Policy(uid=user[0], gid=user[1]).identity() if user is not None else []
        args += ["--cap-drop", "ALL"]
        if drop:  # setpriv's own: gone once it runs argv
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            args += ["--cap-add", "CAP_SETPCAP"]
        args += ["--", "/bin/sh", "-c", wait, "sylphx-egress", *drop, *argv]
        env = {"PATH": os.defpath, "HOME": "/tmp", "TMPDIR": "/tmp"}
        if writable:
            env["TMPDIR"] = str(writable[0])  # big layers: not a tmpfs
        group = _cgroup()  # the sandbox's memory, its /tmp's too (a tmpfs), and its pids
        try:
            proc = subprocess.Popen(
                [*(group.join_prefix() if group is not None else []), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(net.info_w, net.block_r),
                env=env,
                start_new_session=True,
            )
        except BaseException:
            if group is not None:
                _cgroups().release(group, wait=GONE_SECONDS)
            raise
        try:
            net.spawned()
            why = net.attach(slirp, PRIVATE_NETWORKS)
            try:
                out, err = communicate(proc, timeout, look)
            except (subprocess.TimeoutExpired, StorageFull):
                if proc.returncode is None:  # (reaped already: its group may be reused)
                    os.killpg(proc.pid, signal.SIGKILL)
                reap(proc)
                raise
            if why is not None:  # it ran without a way out: say why with its own error
                err += f"\n(its network could not be set up: {why})".encode()
            return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if group is not None:
                _cgroups().release(group, wait=GONE_SECONDS)
            net.close()
            if net.slirp_pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(net.slirp_pid, 0)  # it ends once its exit pipe closed


def _searchable(st: os.stat_result, user: tuple[int, int]) -> bool:
    if st.st_uid == user[0]:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user[1]:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _filesystem(
    resolver: str, writable: Sequence[Path], hide: Sequence[Path], user: tuple[int, int] | None
) -> list[str]:
    """bubblewrap's arguments for the sandbox's files: the host read-only, with its own
    /tmp; the top-level folders an unprivileged user could not search (``/root``), what
    ``hide`` names and the password hashes covered (as root, without this, it read the
    home when the home was under /root); each writable folder bound back, with a way to it
    that ``user`` may pass."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    args += ["--perms", "1777", "--tmpfs", "/tmp", "--ro-bind", resolver, "/etc/resolv.conf"]
    roots = [root for root in private_roots() if root != PRIVATE]
    for root in roots:  # skopeo needs nothing in them
        args += ["--perms", "0555", "--tmpfs", str(root)]
    hidden = [*map(Path, hide), *_SECRETS]
    args += _hides(hidden, [])  # (a skopeo exploited reads none)
    covered = [PRIVATE, *roots, *(path for path in hidden if os.path.isdir(path))]
    for folder in writable:
        args += [*_way_to(folder, user, covered), "--bind", str(folder), str(folder)]
    return args


def _way_to(folder: Path, user: tuple[int, int] | None, covered: Sequence[Path]) -> list[str]:
    """bubblewrap's arguments that give ``user`` a way to ``folder``: from the tmpfs of
    the sandbox it is under -- or one put over the highest host folder ``user`` may not
    pass (the image cache is root's alone, 0700), which then shows nothing else of it --
    each folder on the way made 0755, as for a shard's binds (bubblewrap's own: 0700)."""
    if user is None:
        return []
    for above in reversed(folder.parents):  # "/" first
        if above in covered:
            return _parents(folder, [above])
        if not _searchable(os.stat(above), user):
            return ["--perms", "0755", "--tmpfs", str(above), *_parents(folder, [above])]
    return []
