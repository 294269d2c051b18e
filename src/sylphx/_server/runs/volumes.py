"""Volumes: ReadWriteMany directories that runs mount into every shard."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import ConflictError, NotFound
from sylphx._core.ids import new_id
from sylphx._core.states import RunState
from sylphx._core.views import VolumeView
from sylphx._server.store import RunRow, VolumeRow


def create(s: Session, org_id: str, *, name: str | None, root: Path, now: datetime) -> VolumeView:
    vid = new_id("vol")
    path = root / vid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)  # its shards' alone (its path shows in a launch's command line)
    row = VolumeRow(id=vid, org_id=org_id, name=name, path=str(path), created_at=now)
    s.add(row)
    return view(row)


def view(row: VolumeRow) -> VolumeView:
    return VolumeView(id=row.id, name=row.name, created_at=row.created_at)


def list_all(s: Session, org_id: str) -> list[VolumeView]:
    query = select(VolumeRow).where(VolumeRow.org_id == org_id).order_by(VolumeRow.id)
    return [view(v) for v in s.scalars(query)]


def delete(s: Session, volume_id: str, org_id: str) -> None:
    row = s.get(VolumeRow, volume_id)
    if row is None or row.org_id != org_id:
        raise NotFound(f"volume {volume_id!r} not found. Fix: check `sylphx volumes list`.")
    active = s.scalars(
        select(RunRow).where(
            RunRow.org_id == org_id,
            RunRow.state.in_((RunState.QUEUED.value, RunState.RUNNING.value)),
        )
    )
    users = [
        r.id
        for r in active
        if any(m.get("volumeId") == volume_id for m in r.spec.get("volumeMounts", []))
    ]
    if users:
        raise ConflictError(
            f"volume {volume_id} is mounted by active run(s) {', '.join(users)}. Fix: wait for"
            " them to finish or cancel them, then delete the volume."
        )
    s.delete(row)
    shutil.rmtree(row.path, ignore_errors=True)


@dataclass(frozen=True, kw_only=True, eq=False)
class VolumeService:
    """The org-scoped volume operations the HTTP edge calls: each volume is a directory
    under ``root`` (SYLPHX_HOME/volumes) and a row written through ``sessions``."""

    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    root: Path
    now: Callable[[], datetime]

    def create(self, org_id: str, name: str | None) -> VolumeView:
        """Create a volume and its directory."""
        with self.sessions.begin() as s:
            return create(s, org_id, name=name, root=self.root, now=self.now())

    def list_all(self, org_id: str) -> list[VolumeView]:
        """Every volume of the org."""
        with self.reads() as s:
            return list_all(s, org_id)

    def delete(self, volume_id: str, org_id: str) -> None:
        """Delete a volume and its files (ConflictError while a live run mounts it)."""
        with self.sessions.begin() as s:
            delete(s, volume_id, org_id)
