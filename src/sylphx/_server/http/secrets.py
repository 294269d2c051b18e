"""``/v1/secrets``: the org's scoped secrets (values never leave the store but to shards)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from sylphx._core import limits
from sylphx._core.limits import Text
from sylphx._core.views import SecretView
from sylphx._server.tenancy import secrets

from .deps import Org, Plane, SecretName

__all__ = ["SecretPut", "router"]

router = APIRouter()


class SecretPut(BaseModel):
    """A secret to store: its env-var style name and its value (never returned)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        Text, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=limits.MAX_NAME_BYTES)
    ]
    value: Annotated[Text, Field(max_length=limits.MAX_SECRET_BYTES)]


@router.post("/v1/secrets", status_code=201, response_model=SecretView)
def put_secret(body: SecretPut, org_id: Org, plane: Plane, response: Response) -> SecretView:
    """Create or replace a secret (201 created, 200 replaced); the value is never
    returned by any endpoint."""
    with plane.sessions.begin() as s:
        created = secrets.put(s, org_id, body.name, body.value, plane.cipher, plane.now())
    if not created:
        response.status_code = 200
    with plane.reads() as s:
        return next(v for v in secrets.list_all(s, org_id) if v.name == body.name)


@router.get("/v1/secrets", response_model=list[SecretView])
def list_secrets(org_id: Org, plane: Plane) -> list[SecretView]:
    """Names and times of every secret of the org."""
    with plane.reads() as s:
        return secrets.list_all(s, org_id)


@router.delete("/v1/secrets/{name}", status_code=204)
def delete_secret(name: SecretName, org_id: Org, plane: Plane) -> Response:
    """Delete a secret; runs that name it can no longer start."""
    with plane.sessions.begin() as s:
        secrets.delete(s, org_id, name)
    return Response(status_code=204)
