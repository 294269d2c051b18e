"""Where the CLI and SDK find API keys: ``sylphx login``'s store and the embedded key."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sylphx._settings import home_dir


def credentials_file() -> Path:
    """``$SYLPHX_HOME/credentials.json``: URL -> API key, mode 0600."""
    return home_dir() / "credentials.json"


def load_token(url: str | None) -> str | None:
    """The stored key for ``url``; for the embedded default (None), its local key."""
    if url is None:
        local = home_dir() / "local-token"
        return local.read_text().strip() if local.exists() else None
    path = credentials_file()
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None
    token = stored.get(url.rstrip("/")) if isinstance(stored, dict) else None
    return token if isinstance(token, str) else None


def save_token(url: str, token: str) -> Path:
    """Remember ``token`` for ``url`` (atomically, readable only by this user)."""
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    stored: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            stored = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            stored = {}
    stored[url.rstrip("/")] = token
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(stored, fh, indent=2)
    os.replace(tmp, path)
    return path
