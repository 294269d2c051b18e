"""Volumes: ReadWriteMany directories that runs mount into every shard."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .._errors import ConflictError, NotFound
from .._ids import new_id
from .._states import RunState
from .._views import VolumeView
from .store import RunRow, VolumeRow


def create(s: Session, *, name: str | None, root: Path, now: datetime) -> VolumeView:
    vid = new_id("vol")
    path = root / vid
    path.mkdir(parents=True, exist_ok=False)
    row = VolumeRow(id=vid, name=name, path=str(path), created_at=now)
    s.add(row)
    return view(row)


def view(row: VolumeRow) -> VolumeView:
    return VolumeView(id=row.id, name=row.name, created_at=row.created_at)


def list_all(s: Session) -> list[VolumeView]:
    return [view(v) for v in s.scalars(select(VolumeRow).order_by(VolumeRow.id))]


def delete(s: Session, volume_id: str) -> None:
    row = s.get(VolumeRow, volume_id)
    if row is None:
        raise NotFound(f"volume {volume_id!r} not found. Fix: check `sylphx volumes list`.")
    active = s.scalars(
        select(RunRow).where(RunRow.state.in_((RunState.QUEUED.value, RunState.RUNNING.value)))
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
