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
import tarfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, cast

__all__ = ["BoundedTarInfo", "as_reader", "members", "open_regular", "open_tar", "reading_as"]

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
        # -1 changes nothing and says what it is
        if (_libc.syscall(setfsuid, -1), _libc.syscall(setfsgid, -1)) != (uid, gid):
            raise OSError(f"cannot take uid {uid}, gid {gid} to read a tenant's files")
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


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_OPENAT2 = 437  # the same number on every Linux machine
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08
_libc.syscall.restype = ctypes.c_long


def _openat2(directory: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2): ``path`` resolved as ``resolve`` says, or OSError. Never a magic link
    of /proc (``/proc/PID/root``, ``cwd``, ``fd/N``): through one, a reader with the
    shards' uid entered another shard's mount namespace, root's too (found by a review)."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_OPENAT2, directory, os.fsencode(path), ctypes.byref(how), 24)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{path}: {os.strerror(err)}")
    return int(fd)


def open_regular(
    path: str | Path, under: str | Path | None = None, *, alone: bool = False
) -> tuple[IO[bytes], int]:
    """``path`` opened for reading (as the reader, see :func:`reading_as`), and its size,
    if it is a regular file (a FIFO is not waited on); OSError otherwise. With ``under``
    (a layout's folder), ``path`` is a name inside it, and neither ``..`` nor a link may
    lead out of it; no magic link of /proc is followed in any case. ``alone``: no link
    at all on the way below ``under``, and the file has no other name (a hard link) --
    for files another user wrote into a folder of ours."""
    resolve = _RESOLVE_BENEATH | (_RESOLVE_NO_SYMLINKS if alone else 0)
    with as_reader():
        if under is None:
            fd = _openat2(AT_FDCWD, str(path), os.O_RDONLY | os.O_NONBLOCK, 0)
        else:
            folder = _openat2(AT_FDCWD, str(under), os.O_PATH | os.O_DIRECTORY, 0)
            try:
                fd = _openat2(folder, str(path), os.O_RDONLY | os.O_NONBLOCK, resolve)
            finally:
                os.close(folder)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if alone and st.st_nlink != 1:
            raise OSError(f"{path} has other names (hard links)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


AT_FDCWD = -100


_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.GNUTYPE_SPARSE,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
MAX_TAR_HEADER = 64 << 10  # a pax or GNU long-name header's own data
MAX_TAR_MEMBERS = 100_000  # an image archive has a few dozen


class BoundedTarInfo(tarfile.TarInfo):
    """A member whose extended header (pax, GNU long name) is read into memory only up
    to :data:`MAX_TAR_HEADER`: an 8 KiB sparse tar whose pax header claimed 3 GiB made
    the control plane read 9 GiB into memory (found by a review)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADERS and self.size > MAX_TAR_HEADER:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


def open_tar(fh: IO[bytes]) -> tarfile.TarFile:
    """An uncompressed tar archive over ``fh``, its extended headers bounded."""
    return tarfile.open(fileobj=fh, mode="r:", tarinfo=BoundedTarInfo)


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """``tar``'s members one by one, none kept (tarfile keeps every member it has read:
    a docker archive of a million empty members took 610 MiB, found by a review), at
    most :data:`MAX_TAR_MEMBERS`, none sparse nor reaching past the archive's end."""
    size = os.fstat(cast(IO[bytes], tar.fileobj).fileno()).st_size  # (open_tar's fh)
    for count in range(MAX_TAR_MEMBERS + 1):
        member = tar.next()
        vars(tar)["members"].clear()  # (where CPython keeps them; not in its stubs)
        if member is None:
            return
        if count == MAX_TAR_MEMBERS:
            raise tarfile.HeaderError(f"more than {MAX_TAR_MEMBERS} members")
        if member.issparse() or member.offset_data + member.size > size:
            # a sparse member's holes are read as zeros: 32 GiB from an archive of 10 KiB
            raise tarfile.HeaderError(f"{member.name!r} holds more than the archive does")
        yield member
