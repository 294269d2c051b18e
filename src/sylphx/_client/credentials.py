"""Where the CLI and SDK find API keys: ``sylphx login``'s per-URL store (the contexts in
``contexts.py`` hold keys too) and the embedded control plane's own key.

The files that hold keys are trusted the way ssh trusts its own: before one is read, it and
its directory must be this user's (the effective uid), writable by no one else, and the
file readable by no one else; neither may be a symbolic link. Anything else is refused with
a ValidationError naming the path, the problem and the fix, so that another local user can
neither plant a URL (to collect the keys sent there) nor read the keys.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from sylphx._core.errors import ValidationError
from sylphx._settings import home_dir

HOME_ENV = "SYLPHX_HOME"


def credentials_file() -> Path:
    """``$SYLPHX_HOME/credentials.json``: URL -> API key, mode 0600."""
    return home_dir() / "credentials.json"


def _refuse(path: Path, problem: str, fix: str, setting: str) -> ValidationError:
    return ValidationError(
        f"refusing to use {path}: {problem}. Fix: {fix}",
        details=[{"field": setting, "rule": problem, "fix": fix}],
    )


def _check_owner(path: Path, st: os.stat_result, setting: str, elsewhere: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise _refuse(
            path,
            f"it is owned by uid {st.st_uid}, not by you (uid {me}), so that user could plant"
            " the URLs and keys sylphx reads there",
            f"`chown {me} {path}` (as root) if it is yours, else {elsewhere}",
            setting,
        )


def _elsewhere(setting: str) -> str:
    return f"point {setting} at a directory of your own"


def check_private_dir(path: Path, setting: str) -> None:
    """Refuse (ValidationError) a directory that holds keys when it is a symbolic link, not
    this user's or writable by group or others; a missing one passes (it is made 0700)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    elsewhere = _elsewhere(setting)
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link (another user could re-point it)"
        raise _refuse(path, problem, f"make it a real directory, or {elsewhere}", setting)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "it is not a directory", elsewhere, setting)
    _check_owner(path, st, setting, elsewhere)
    if st.st_mode & 0o022:
        problem = (
            f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), who"
            " could swap the files sylphx reads there"
        )
        raise _refuse(path, problem, f"`chmod 700 {path}`", setting)


def read_private(path: Path, setting: str) -> str | None:
    """The text of a file that holds keys (None when it does not exist), after checking it
    and its directory (see the module's docstring); ``setting`` names the variable that
    moves them (``SYLPHX_CONFIG_DIR``, ``SYLPHX_HOME``)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO: no hang
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        check_private_dir(path.parent, setting)
        if exc.errno == errno.ELOOP:
            problem = "it is a symbolic link (another user could re-point it)"
            fix = f"replace it with the file itself, or delete it (`rm {path}`)"
            raise _refuse(path, problem, fix, setting) from None
        problem = f"it cannot be read ({exc.strerror})"
        fix = f"make it yours and private (`chown {os.geteuid()} {path}; chmod 600 {path}`)"
        raise _refuse(path, problem, fix, setting) from None
    with os.fdopen(fd) as fh:
        check_private_dir(path.parent, setting)
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "it is not a regular file", f"delete it (`rm {path}`)", setting)
        _check_owner(path, st, setting, f"delete it (`rm {path}`) and log in again")
        if st.st_mode & 0o077:
            problem = (
                f"group or others can read or change it (mode {stat.S_IMODE(st.st_mode):04o})"
                " and it holds API keys"
            )
            fix = f"`chmod 600 {path}` (and replace its keys if others may have read them)"
            raise _refuse(path, problem, fix, setting)
        return fh.read()


def write_private(path: Path, data: Any, setting: str) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file in the same folder,
    then a rename), readable only by this user (mode 0600; a new folder gets 0700). The
    folder is checked as :func:`read_private` checks it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(path.parent, setting)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates it 0600
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _stored() -> dict[str, str]:
    text = read_private(credentials_file(), HOME_ENV)
    try:
        loaded = json.loads(text) if text is not None else None
    except ValueError:
        loaded = None  # not JSON: nothing stored (the next login rewrites it)
    if not isinstance(loaded, dict):
        return {}
    return {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}


def load_token(url: str | None) -> str | None:
    """The key ``sylphx login`` stored for ``url``; for the embedded default (None), its
    local key."""
    if url is None:
        local = home_dir() / "local-token"
        return local.read_text().strip() if local.exists() else None
    return _stored().get(url.rstrip("/"))


def save_token(url: str, token: str) -> Path:
    """Remember ``token`` for ``url`` (atomically, readable only by this user)."""
    stored = _stored()
    stored[url.rstrip("/")] = token
    return write_private(credentials_file(), stored, HOME_ENV)


def forget_token(url: str) -> bool:
    """Forget the key stored for ``url``; False when there was none."""
    stored = _stored()
    if stored.pop(url.rstrip("/"), None) is None:
        return False
    write_private(credentials_file(), stored, HOME_ENV)
    return True
