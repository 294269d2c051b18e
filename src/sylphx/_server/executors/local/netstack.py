"""A shard's own network: bubblewrap makes an empty network namespace, slirp4netns gives
it outbound connectivity through a user-mode TCP/IP stack, without the host's loopback.

Standard library only: the attempt supervisor (``python -I -S supervise.py``) imports it
beside itself, and so does a Ray task. The hand-shake per shard, all through pipes:

1. the shard's bubblewrap gets ``--info-fd INFO_FD --block-fd BLOCK_FD``: it writes the
   sandbox's pid as JSON once its namespaces exist, then waits before it runs the shard;
2. :func:`attach` reads that pid and starts ``slirp4netns`` on the sandbox's network
   namespace (``/proc/PID/ns/net``) with ``--disable-host-loopback`` (nothing listening
   on the host's 127.0.0.1 is reachable: not the control plane, not a database), in its
   own sandbox and seccomp filter; it waits until the interface is configured;
3. it then lets bubblewrap go on (closes the block pipe). slirp4netns ends when its
   exit pipe closes: :meth:`Net.close` when the shard ended, or the supervisor's death.

A shard whose network could not be set up still starts, without a route out (as with
``network: false``), and its stderr says why.

Between 2 and 3, :func:`close_networks` adds a ``prohibit`` route in the shard's namespace
for each of :data:`BLOCKED_NETWORKS` -- the cloud metadata services, which hand the host
machine's own credentials to whoever asks from it (slirp4netns connects from the host).
A connect there fails at once (EACCES); the shard has no capability to remove the route.
If the routes cannot be added, slirp4netns is stopped: the shard starts unrouted. (A
control plane that is not root -- a development set-up, whose shards run as its own user
-- cannot enter the sandbox's namespaces and adds none.)
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import time

SECCOMP_FD = 3  # bwrap --seccomp: the compiled filter, opened read-only
INFO_FD = 4  # bwrap --info-fd: the sandbox's pid, as JSON
BLOCK_FD = 5  # bwrap --block-fd: the sandbox waits until this closes
ENV_FD = 6  # bwrap --args: the shard's environment, given by its last stage only
# What the launch chain before the shard (a shell joining the cgroup, bubblewrap and
# setpriv as root) runs with: nothing of the tenant's (LD_PRELOAD and the like would
# run the tenant's code as root there). The shard's own environment comes in at ENV_FD.
CHAIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def env_fd(env: dict[str, str]) -> int:
    """A memory-only file (close-on-exec, at fd 10 or above) holding ``env`` as bwrap
    arguments (``--args``): cleared, then set variable by variable. Never on disk, never
    in a command line (secrets are in it)."""
    parts = ["--clearenv"]
    for key, value in env.items():
        parts += ["--setenv", key, value]
    fd = os.memfd_create("sylphx-env", os.MFD_CLOEXEC)
    try:
        data = b"\0".join(p.encode() for p in parts) + b"\0"
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)
    return high


# Longest wait for bubblewrap's pid and slirp4netns's ready byte: long, for both only come
# late on a host loaded far beyond its cores (a Ray node running 200 sandboxes on 2).
READY_SECONDS = 60.0
SLIRP_ARGS = (
    "--configure",
    "--mtu=65520",
    "--disable-host-loopback",
    "--enable-sandbox",
    "--enable-seccomp",
)


# What no shard reaches, whatever the host can: link-local (169.254.169.254 is the
# metadata service of AWS, GCP, Azure, Oracle and DigitalOcean), Alibaba Cloud's, and
# Azure's WireServer (it answers root's connections, and slirp4netns connects as root);
# and the host's own addresses (see host_addresses), added when a sandbox is attached.
BLOCKED_NETWORKS = (("169.254.0.0", 16), ("100.100.100.200", 32), ("168.63.129.16", 32))
_HOST_ADDRESSES_TTL = 5.0
_host_addresses: tuple[float, tuple[tuple[str, int], ...]] = (0.0, ())
_CLONE_NEWNET = 0x40000000
_RTM_NEWROUTE, _NLMSG_ERROR = 24, 2
_NLM_F_REQUEST_ACK_CREATE_EXCL = 0x1 | 0x4 | 0x400 | 0x200
_RT_TABLE_MAIN, _RTPROT_STATIC, _RTN_PROHIBIT, _RTA_DST = 254, 4, 8, 1


Networks = tuple[tuple[str, int], ...]  # (address, prefix length) pairs


def close_networks(pid: int, networks: Networks = BLOCKED_NETWORKS) -> None:
    """Add a ``prohibit`` route for each of ``networks`` in the network namespace of
    ``pid`` (see the module), over rtnetlink; OSError when one is not added."""
    import ctypes  # not at the top: most supervisors never need it
    import socket
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot enter the shard's network")
            try:  # a netlink socket speaks for the namespace it was made in
                kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
                sock = socket.socket(socket.AF_NETLINK, kind, socket.NETLINK_ROUTE)
            finally:
                if libc.setns(own, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "cannot leave the shard's network")
        finally:
            os.close(target)
    finally:
        os.close(own)
    with sock:
        for seq, (address, prefix) in enumerate(networks, 1):
            route = struct.pack(
                "=BBBBBBBBI", socket.AF_INET, prefix, 0, 0, _RT_TABLE_MAIN, _RTPROT_STATIC,
                0, _RTN_PROHIBIT, 0,
            ) + struct.pack("=HH4s", 8, _RTA_DST, socket.inet_aton(address))  # fmt: skip
            head = struct.pack(
                "=IHHII", 16 + len(route), _RTM_NEWROUTE, _NLM_F_REQUEST_ACK_CREATE_EXCL, seq, 0
            )
            sock.send(head + route)
            reply = sock.recv(4096)
            kind_, error = (
                struct.unpack_from("=H", reply, 4)[0],
                struct.unpack_from("=i", reply, 16)[0],
            )
            if kind_ != _NLMSG_ERROR or error != 0:
                raise OSError(-error, f"cannot close {address}/{prefix}")


def host_addresses() -> tuple[tuple[str, int], ...]:
    """This host's own IPv4 addresses (as /32 networks), but its loopback and slirp4netns's
    own 10.0.2.0/24: a connection to one through slirp4netns comes from the host itself,
    past its firewall's and its services' notion of "another machine" (found by a review).
    Read from /proc/net/fib_trie, again at most every few seconds."""
    global _host_addresses
    read_at, found = _host_addresses
    if read_at and time.monotonic() - read_at < _HOST_ADDRESSES_TTL:
        return found
    local: dict[str, None] = {}
    try:
        with open("/proc/net/fib_trie") as fh:
            last = ""
            for line in fh:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text == "/32 host LOCAL" and not last.startswith(("127.", "10.0.2.")):
                    local[last] = None
    except OSError:
        pass
    found = tuple((address, 32) for address in local)
    _host_addresses = (time.monotonic(), found)
    return found


def slirp4netns_path() -> str | None:
    """Where slirp4netns is on this host (the control plane asks; not the supervisor)."""
    import shutil  # not at the top: every supervisor start would pay for it

    return shutil.which("slirp4netns", path=os.environ.get("PATH") or os.defpath)


def reaped(pid: int) -> bool:
    """Whether the (slirp4netns) child ``pid`` has ended; reaps it if so."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def high_pipe() -> tuple[int, int]:
    """A pipe whose ends are at fd 10 or above (close-on-exec), so a child's low fds
    (stdio, SECCOMP_FD, INFO_FD, BLOCK_FD) can be set up without clobbering them."""
    pair = os.pipe()
    out = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in pair)
    for fd in pair:
        os.close(fd)
    return out[0], out[1]


class Net:
    """One shard's network hand-shake and, once attached, its slirp4netns process."""

    def __init__(self) -> None:
        self.info_r, self.info_w = high_pipe()
        self.block_r, self.block_w = high_pipe()
        self.slirp_pid = 0
        self.exit_w = -1  # slirp4netns exits when this closes
        self.late_info = -1  # the info pipe of a sandbox that reported late, kept open

    def child_fds(self) -> list[tuple[int, int]]:
        """(source, target) pairs to dup2 into the shard's process before exec."""
        return [(self.info_w, INFO_FD), (self.block_r, BLOCK_FD)]

    def spawned(self) -> None:
        """The shard's process exists: close our copies of its ends."""
        for fd in (self.info_w, self.block_r):
            os.close(fd)
        self.info_w = self.block_r = -1

    def attach(self, slirp: str, blocked: Networks = BLOCKED_NETWORKS) -> str | None:
        """Give the sandbox its network, ``blocked`` closed, and let it start; returns
        why not, or None."""
        try:
            pid = _read_pid(self.info_r)
            if pid is None:
                return None  # bubblewrap ended before its namespaces existed: nothing to do
            if pid < 0:  # a host too loaded to start it in time: it goes on, unrouted
                self.late_info, self.info_r = self.info_r, -1  # closed with the shard
                return f"bubblewrap did not report its sandbox within {READY_SECONDS:g} s"
            if os.geteuid() == 0 and not _set_up(pid):
                return None  # the sandbox ended during its set-up
            ready_r, ready_w = high_pipe()
            exit_r, self.exit_w = high_pipe()
            try:
                self.slirp_pid = os.posix_spawn(
                    slirp,
                    [
                        slirp,
                        *SLIRP_ARGS,
                        "--ready-fd=3",
                        "--exit-fd=4",
                        "--netns-type=path",
                        f"/proc/{pid}/ns/net",
                        "tap0",
                    ],
                    {"PATH": os.defpath},
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_DUP2, ready_w, 3),
                        (os.POSIX_SPAWN_DUP2, exit_r, 4),
                    ],
                    setsid=True,
                )
            finally:
                os.close(ready_w)
                os.close(exit_r)
            try:
                ready = _read_within(ready_r, 1)
            finally:
                os.close(ready_r)
            if ready is None:
                return f"slirp4netns did not configure the interface within {READY_SECONDS:g} s"
            if ready != b"1":
                return "slirp4netns did not configure the interface"
            try:  # a control plane not root (development) runs shards as itself: no guard
                if os.geteuid() == 0:
                    close_networks(pid, (*blocked, *host_addresses()))
            except OSError as exc:  # never a way out to the metadata services: none at all
                os.close(self.exit_w)
                self.exit_w = -1
                return f"could not close the metadata networks ({exc})"
            return None
        except OSError as exc:
            return f"could not start slirp4netns: {exc}"
        finally:
            self.release()

    def release(self) -> None:
        """Let the sandbox go on (with or without a network)."""
        for fd in (self.info_r, self.block_w):
            if fd != -1:
                os.close(fd)
        self.info_r = self.block_w = -1

    def close(self) -> None:
        """The shard ended: slirp4netns goes too (it is reaped by whoever waits on it)."""
        self.release()
        for fd in (self.info_w, self.block_r, self.exit_w, self.late_info):
            if fd != -1:
                os.close(fd)
        self.info_w = self.block_r = self.exit_w = self.late_info = -1


def _set_up(pid: int) -> bool:
    """Wait until the sandbox's first stage (pid 1 of its namespaces) has set them up --
    its loopback interface included -- and started the next stage: slirp4netns working
    in the namespace at the same time made that set-up fail now and then (1 shard in 16:
    "loopback: Failed RTM_NEWADDR"). False when it ended first."""
    deadline = time.monotonic() + READY_SECONDS
    path = f"/proc/{pid}/task/{pid}/children"
    while time.monotonic() < deadline:
        try:
            with open(path) as fh:
                if fh.read().strip():
                    return True
        except OSError:
            return False
        time.sleep(0.0005)
    return False


def _read_within(fd: int, size: int) -> bytes | None:
    """Up to ``size`` bytes from ``fd``, waiting at most READY_SECONDS; b"" on EOF, None
    when nothing came in time."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    if not poller.poll(READY_SECONDS * 1000):
        return None
    return os.read(fd, size)


def _read_pid(fd: int) -> int | None:
    """The sandbox's pid from bubblewrap's info JSON; None when it ended first, -1 when
    it wrote nothing in time. The read end must then stay open: bubblewrap writing into
    a pipe with no reader dies of SIGPIPE (1 sandboxed shard in ~200 on a host with a
    load of 70, with the 10 s this once waited)."""
    data = b""
    while not data.rstrip().endswith(b"}"):
        chunk = _read_within(fd, 4096)
        if chunk is None:
            return -1
        if not chunk:
            return None
        data += chunk
    pid = json.loads(data).get("child-pid")
    return int(pid) if isinstance(pid, int) else None
