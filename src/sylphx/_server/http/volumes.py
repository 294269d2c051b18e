"""``/v1/volumes``: the org's ReadWriteMany volumes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from sylphx._core import limits
from sylphx._core.limits import Text
from sylphx._core.views import VolumeView
from sylphx._server.runs import volumes

from .deps import Org, Plane, VolumeId

__all__ = ["VolumeCreate", "router"]

router = APIRouter()


class VolumeCreate(BaseModel):
    """A volume to create; its name is for people (ids name volumes in specs)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(max_length=limits.MAX_VOLUME_NAME_BYTES)] | None = None


@router.post("/v1/volumes", status_code=201, response_model=VolumeView)
def create_volume(org_id: Org, plane: Plane, body: VolumeCreate | None = None) -> VolumeView:
    """Create a volume (its directory under SYLPHX_HOME/volumes)."""
    with plane.sessions.begin() as s:
        return volumes.create(
            s,
            org_id,
            name=body.name if body else None,
            root=plane.settings.volumes_dir,
            now=plane.now(),
        )


@router.get("/v1/volumes", response_model=list[VolumeView])
def list_volumes(org_id: Org, plane: Plane) -> list[VolumeView]:
    """Every volume of the org."""
    with plane.reads() as s:
        return volumes.list_all(s, org_id)


@router.delete("/v1/volumes/{volume_id}", status_code=204)
def delete_volume(volume_id: VolumeId, org_id: Org, plane: Plane) -> Response:
    """Delete a volume and its files (409 while a live run mounts it)."""
    with plane.sessions.begin() as s:
        volumes.delete(s, volume_id, org_id)
    return Response(status_code=204)
