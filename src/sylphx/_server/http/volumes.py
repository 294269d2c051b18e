"""``/v1/volumes``: the org's ReadWriteMany volumes, over
:class:`~sylphx._server.runs.volumes.VolumeService`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from sylphx._core import limits
from sylphx._core.limits import Text
from sylphx._core.views import VolumeView

from .deps import Org, VolumeId, Volumes

__all__ = ["VolumeCreate", "router"]

router = APIRouter()


class VolumeCreate(BaseModel):
    """A volume to create; its name is for people (ids name volumes in specs)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(max_length=limits.MAX_VOLUME_NAME_BYTES)] | None = None


@router.post("/v1/volumes", status_code=201, response_model=VolumeView)
def create_volume(org_id: Org, volumes: Volumes, body: VolumeCreate | None = None) -> VolumeView:
    """Create a volume (its directory under SYLPHX_HOME/volumes)."""
    return volumes.create(org_id, body.name if body else None)


@router.get("/v1/volumes", response_model=list[VolumeView])
def list_volumes(org_id: Org, volumes: Volumes) -> list[VolumeView]:
    """Every volume of the org."""
    return volumes.list_all(org_id)


@router.delete("/v1/volumes/{volume_id}", status_code=204)
def delete_volume(volume_id: VolumeId, org_id: Org, volumes: Volumes) -> Response:
    """Delete a volume and its files (409 while a live run mounts it)."""
    volumes.delete(volume_id, org_id)
    return Response(status_code=204)
