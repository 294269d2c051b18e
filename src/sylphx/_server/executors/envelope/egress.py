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
writes (its work folder), and not at all what ``hide`` names (the home, its keys).

A registry the operator lists in ``SYLPHX_PRIVATE_REGISTRIES`` (an in-house one) is
contacted from the host's own network, as before; so is every registry when the control
plane is not root or lacks bubblewrap or slirp4netns (a development set-up).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sylphx._core.errors import StorageFull
from sylphx._server.executors.local.netstack import Net, Networks, slirp4netns_path
from sylphx._server.images.room import Watch, communicate, run_watched

from .sandbox import _hides, bwrap_path

__all__ = ["PRIVATE_NETWORKS", "run_confined"]

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
    look: Watch = lambda: None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (a skopeo) as :mod:`this module <.egress>` says, ``writable`` the
    folders it may write, ``hide`` (and the host's password hashes) covered; its output
    captured. TimeoutExpired after ``timeout`` s, ``look``'s error once it finds the disk
    short (:mod:`images.room <sylphx._server.images.room>`): the whole sandbox is killed."""
    slirp, bwrap = slirp4netns_path(), _bwrap()
    if os.geteuid() != 0 or slirp is None or bwrap is None:
        return run_watched(argv, timeout, look)
    with tempfile.NamedTemporaryFile(prefix="sylphx-resolv-") as resolver:
        resolver.write(_RESOLVER)
        resolver.flush()
        os.chmod(resolver.name, 0o644)
        net = Net()
        args = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
        args += ["--info-fd", str(net.info_w)]
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        args += ["--ro-bind", resolver.name, "/etc/resolv.conf"]
        args += _hides([*map(Path, hide), *_SECRETS], [])  # (a skopeo exploited reads none)
        for folder in writable:
            args += ["--bind", str(folder), str(folder)]
        # a second stage that waits for the network: bubblewrap's first one has then set
        # its namespaces up, its loopback included (netstack.Net.attach waits for it)
        wait = f'head -c1 /proc/self/fd/{net.block_r} >/dev/null; exec "$@"'
        args += ["--cap-drop", "ALL", "--", "/bin/sh", "-c", wait, "sylphx-egress", *argv]
        env = {"PATH": os.defpath, "HOME": "/tmp", "TMPDIR": "/tmp"}
        if writable:
            env["TMPDIR"] = str(writable[0])  # big layers: not a tmpfs
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(net.info_w, net.block_r),
            env=env,
            start_new_session=True,
        )
        try:
            net.spawned()
            why = net.attach(slirp, PRIVATE_NETWORKS)
            try:
                out, err = communicate(proc, timeout, look)
            except (subprocess.TimeoutExpired, StorageFull):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise
            if why is not None:  # it ran without a way out: say why with its own error
                err += f"\n(its network could not be set up: {why})".encode()
            return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            net.close()
            if net.slirp_pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(net.slirp_pid, 0)  # it ends once its exit pipe closed
