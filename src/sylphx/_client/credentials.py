"""Where the CLI and SDK find API keys: ``sylphx login``'s per-URL store (the contexts in
``contexts.py`` hold keys too) and the embedded control plane's own key."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sylphx._settings import home_dir


def credentials_file() -> Path:
    """``$SYLPHX_HOME/credentials.json``: URL -> API key, mode 0600."""
    return home_dir() / "credentials.json"


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_private(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file in the same folder,
    then a rename), readable only by this user (mode 0600; a new folder gets 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
    loaded = read_json(credentials_file())
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
    return write_private(credentials_file(), stored)


def forget_token(url: str) -> bool:
    """Forget the key stored for ``url``; False when there was none."""
    stored = _stored()
    if stored.pop(url.rstrip("/"), None) is None:
        return False
    write_private(credentials_file(), stored)
    return True
