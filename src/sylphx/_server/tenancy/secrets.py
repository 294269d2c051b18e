"""Scoped secrets: stored encrypted (Fernet), never returned by the API, handed only to
the shards of runs that name them. Their values are masked in those shards' logs as the
logs are written (:mod:`.executors.shardlog`), with the values each attempt was given:
logs on disk never hold them, and rotating or deleting a secret leaves old logs as
they are."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from sylphx._core.errors import NotFound, ServerUnavailable
from sylphx._core.views import SecretView
from sylphx._server.store import SecretRow


def load_cipher(configured: str | None, key_file: Path) -> Fernet:
    """The server's secrets key: ``SYLPHX_SECRETS_KEY``, else a key file generated on the
    first start (mode 0600)."""
    key = configured
    if key is None:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = key_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
            os.replace(tmp, key_file)
        key = key_file.read_text().strip()
    try:
        return Fernet(key.encode())
    except ValueError:
        raise ServerUnavailable(
            "the secrets key is not a valid Fernet key. Fix: set SYLPHX_SECRETS_KEY to the"
            " output of `python -c 'from cryptography.fernet import Fernet;"
            " print(Fernet.generate_key().decode())'`"
        ) from None


def view(row: SecretRow) -> SecretView:
    return SecretView(name=row.name, created_at=row.created_at, updated_at=row.updated_at)


def put(s: Session, org_id: str, name: str, value: str, cipher: Fernet, now: datetime) -> bool:
    """Create or replace a secret; True when it was created."""
    token = cipher.encrypt(value.encode()).decode()
    row = s.scalars(
        select(SecretRow).where(SecretRow.org_id == org_id, SecretRow.name == name)
    ).first()
    if row is None:
        s.add(SecretRow(org_id=org_id, name=name, ciphertext=token, created_at=now, updated_at=now))
        return True
    row.ciphertext, row.updated_at = token, now
    return False


def list_all(s: Session, org_id: str) -> list[SecretView]:
    query = select(SecretRow).where(SecretRow.org_id == org_id).order_by(SecretRow.name)
    return [view(row) for row in s.scalars(query)]


def _missing(name: str) -> NotFound:
    return NotFound(
        f"secret {name!r} not found. Fix: create it with `sylphx secrets set {name}`"
        " (POST /v1/secrets), or remove it from the run's secrets."
    )


def delete(s: Session, org_id: str, name: str) -> None:
    row = s.scalars(
        select(SecretRow).where(SecretRow.org_id == org_id, SecretRow.name == name)
    ).first()
    if row is None:
        raise _missing(name)
    s.delete(row)


def check_exist(s: Session, org_id: str, names: list[str]) -> None:
    """NotFound for the first name the org has no secret for."""
    if not names:
        return
    have = set(
        s.scalars(
            select(SecretRow.name).where(SecretRow.org_id == org_id, SecretRow.name.in_(names))
        )
    )
    for name in names:
        if name not in have:
            raise _missing(name)


def reveal(s: Session, org_id: str, names: list[str], cipher: Fernet) -> dict[str, str]:
    """The values of ``names`` (the ones that still exist) for a run's shards."""
    if not names:
        return {}
    rows = s.scalars(select(SecretRow).where(SecretRow.org_id == org_id, SecretRow.name.in_(names)))
    out = {}
    for row in rows:
        try:
            out[row.name] = cipher.decrypt(row.ciphertext.encode()).decode()
        except InvalidToken:
            raise ServerUnavailable(
                f"secret {row.name!r} cannot be decrypted with this server's key. Fix: start"
                " the server with the SYLPHX_SECRETS_KEY it was stored with."
            ) from None
    return out
