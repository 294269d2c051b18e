"""A tenant's image files are opened as the shards' user, never as root.

The control plane is root, and an OCI layout is a folder a tenant names: a layout whose
``index.json`` and ``blobs`` were symlinks into another tenant's root-only folder was
read, copied and run as the first tenant's image (found by a review), and what was
refused told a tenant whether a root-only file existed and what it hashed to. So while a
tenant's path is looked at (:func:`reading_as`), this thread's filesystem identity is the
shards' user: fsuid and fsgid set to theirs and no supplementary groups -- per thread,
with the raw system calls (glibc's ``setgroups`` would change every thread), as an NFS
server serves a client. Changing fsuid from 0 also clears the capabilities that bypass
file permissions for the thread; setting it back restores them. Only opens and stats are
done so; what is read is then written into the cache as root.

:func:`open_regular` opens a regular file only, and returns its size: a file of ``/proc``
or ``/sys`` says 0 (its contents are made up as it is read), so a caller that reads no
more than the size never blocks on one (``/proc/kmsg``) or reads forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import stat
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO

__all__ = ["as_reader", "open_regular", "reading_as"]

# setgroups, setfsuid, setfsgid: per-thread in the kernel, by number for each machine
_CALLS = {"x86_64": (116, 122, 123), "aarch64": (159, 151, 152)}
_reader: ContextVar[tuple[int, int] | None] = ContextVar("sylphx_image_reader", default=None)
_inside: ContextVar[bool] = ContextVar("sylphx_image_reader_inside", default=False)
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _identity(uid: int, gid: int) -> Iterator[None]:
    calls = _CALLS.get(platform.machine())
    if calls is None:  # no numbers for this machine: refuse rather than read as root
        raise OSError(f"cannot read a tenant's files as uid {uid} on {platform.machine()}")
    setgroups, setfsuid, setfsgid = calls
    groups = os.getgroups()
    if _libc.syscall(setgroups, 0, None) != 0:
        raise OSError(ctypes.get_errno(), "cannot drop the supplementary groups")
    _libc.syscall(setfsgid, gid)
    _libc.syscall(setfsuid, uid)
    try:
        if _libc.syscall(setfsuid, -1) != uid:  # -1 changes nothing and says what it is
            raise OSError(f"cannot take uid {uid} to read a tenant's files")
        yield
    finally:
        _libc.syscall(setfsuid, 0)
        _libc.syscall(setfsgid, 0)
        array = (ctypes.c_uint * max(len(groups), 1))(*groups)
        _libc.syscall(setgroups, len(groups), array)


@contextlib.contextmanager
def reading_as(ids: tuple[int, int] | None) -> Iterator[None]:
    """Within it, tenant paths are opened (:func:`open_regular`) and looked at
    (:func:`as_reader`) as ``ids`` (uid, gid) when this process is root; ``None``: as
    this process. Nothing changes until then: writes in between are root's."""
    token = _reader.set(ids)
    try:
        yield
    finally:
        _reader.reset(token)


@contextlib.contextmanager
def as_reader() -> Iterator[None]:
    """This thread's filesystem identity is the reader's (see :func:`reading_as`) within."""
    ids = _reader.get()
    if ids is None or _inside.get() or os.geteuid() != 0:
        yield
        return
    token = _inside.set(True)
    try:
        with _identity(*ids):
            yield
    finally:
        _inside.reset(token)


def open_regular(path: str | Path) -> tuple[IO[bytes], int]:
    """``path`` opened for reading (as the reader, see :func:`reading_as`), and its size,
    if it is a regular file (a FIFO is not waited on); OSError otherwise."""
    with as_reader():
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise
