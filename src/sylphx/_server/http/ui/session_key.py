"""The dashboard's signing key: ``ui-session.key`` under SYLPHX_HOME, 32 random bytes as
64 hex characters, mode 0600.

It is trusted only as ssh trusts its own files: opened without following a symbolic
link, a regular file of this user (the effective uid) that no one else may read or
change, of the right length. Anything else is refused with :class:`SessionKeyRefused`,
naming the file and the fix, rather than signing sessions with a key another user may
know or have chosen. It is made by writing a temporary file and linking it into place
(the first worker of the home to link wins, the others read its key), so it is never
seen empty or half written. (The SDK's key files are checked the same way by
``sylphx._client.credentials``, which the server may not import.)"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = ["KEY_FILE", "SessionKeyRefused", "load"]

KEY_FILE = "ui-session.key"
_HEX_CHARS = 64


class SessionKeyRefused(RuntimeError):
    """The key file is not one this server made and only it can read."""


def _refused(path: Path, problem: str) -> SessionKeyRefused:
    fix = (
        f"remove it (`rm {path}`) and reload; a new key is made, and every dashboard"
        " session ends (API keys are not affected)"
    )
    return SessionKeyRefused(f"refusing the dashboard session key {path}: {problem}. Fix: {fix}.")


def load(home: Path) -> bytes:
    """The home's signing key, made on first use (see the module's docstring)."""
    path = home / KEY_FILE
    for _ in range(2):
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO: no hang
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            _create(path)
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused(path, "it is a symbolic link") from None
            raise _refused(path, f"it cannot be read ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            return _checked(path, os.fstat(fh.fileno()), fh.read(_HEX_CHARS + 1))
    raise _refused(path, "it vanished while it was read")


def _checked(path: Path, st: os.stat_result, data: bytes) -> bytes:
    if not stat.S_ISREG(st.st_mode):
        raise _refused(path, "it is not a regular file")
    if st.st_uid != os.geteuid():
        raise _refused(path, f"it is owned by uid {st.st_uid}, not by this server's")
    if st.st_mode & 0o077:
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        raise _refused(path, f"group or others can read or change it (mode {mode})")
    try:
        if len(data) != _HEX_CHARS:
            raise ValueError
        return bytes.fromhex(data.decode("ascii"))
    except ValueError:
        raise _refused(path, f"it is not {_HEX_CHARS} hex characters (empty or damaged)") from None


def _create(path: Path) -> None:
    """Write a new key beside ``path`` and link it into place, unless another process got
    there first (its key is kept)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates it 0600
            fh.write(secrets.token_hex(_HEX_CHARS // 2))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
