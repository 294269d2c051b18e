"""The shard's seccomp filter: the system calls a shard may never make.

Built with libseccomp (through ``pyseccomp``, its ctypes bindings) and handed to
bubblewrap as a compiled BPF program (``bwrap --seccomp FD``), which loads it last,
just before it execs the shard's command. Everything else is allowed: the filter is
the second wall behind the user namespace (no capabilities, an unprivileged uid),
refusing the kernel interfaces that have no use in a batch shard and a long history
of privilege escalations. The filter covers the native x86_64 ABI and the i386 and
x32 ones (a 32-bit binary cannot go around it); any other ABI is killed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sylphx._core.errors import ExecutorError

# Refused with EPERM, whatever the arguments.
DENIED = (
    # mounts, old and new API, and changing the root
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # namespaces (user namespaces included): no new ones, no joining others
    "unshare",
    "setns",
    # other processes' memory and file descriptors
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    # the kernel itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "uselib",
    "vhangup",
    "lookup_dcookie",
)
# clone() with any of these flags makes a namespace: refused like unshare().
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
# personality(): the execution-domain flags that change how memory is laid out or
# executed. Querying (0xffffffff) and PER_LINUX / PER_LINUX32 / UNAME26 stay allowed.
PERSONALITY_FLAGS = (
    0x0040000,  # ADDR_NO_RANDOMIZE
    0x0100000,  # MMAP_PAGE_ZERO
    0x0200000,  # ADDR_COMPAT_LAYOUT
    0x0400000,  # READ_IMPLIES_EXEC
    0x0800000,  # ADDR_LIMIT_32BIT
    0x8000000,  # ADDR_LIMIT_3GB
)


def build_filter() -> bytes:
    """The compiled BPF program (what ``bwrap --seccomp`` reads)."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError) as exc:  # the library or libseccomp.so.2
        raise ExecutorError(
            f"the shard seccomp filter needs libseccomp ({exc}). Fix: install the Debian"
            " package libseccomp2 and `pip install pyseccomp` (make system-deps; make venv)."
        ) from exc
    flt = sc.SyscallFilter(sc.ALLOW)
    for arch in (sc.Arch.X86, sc.Arch.X32):
        flt.add_arch(arch)  # the native ABI is in already
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        flt.add_rule(eperm, name)
    for flag in CLONE_NAMESPACE_FLAGS:
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, out of the filter's sight: ENOSYS makes the C
    # library fall back to clone(), which is checked above (as Docker's profile does).
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(eperm, "personality", sc.Arg(0, sc.GT, 0xFFFFFFFF))
    # "flag set and not the all-ones query": one comparison per argument is all libseccomp
    # takes, so pair the flag with each other bit being clear (a value other than the
    # query has some bit clear).
    for flag in PERSONALITY_FLAGS:
        for bit in range(32):
            other = 1 << bit
            if other != flag:
                flt.add_rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, flag | other, flag))
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb") as out:
            flt.export_bpf(out)
        with os.fdopen(read, "rb") as src:
            read = -1
            return src.read()
    finally:
        if read != -1:
            os.close(read)


def write_filter(path: Path) -> Path:
    """Compile the filter into ``path`` (mode 0600, the control plane's) and return it;
    every shard's bubblewrap opens it there (the supervisor passes it as an fd)."""
    data = build_filter()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # already there (a restart): no write, so a full disk does not stop the start
        if path.read_bytes() == data and path.stat().st_mode & 0o777 == 0o600:
            return path
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path
