"""``/v1/secrets``: the org's scoped secrets (values never leave the store but to shards),
over :class:`~sylphx._server.runs.account.SecretService`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from sylphx._core import limits
from sylphx._core.limits import Text
from sylphx._core.views import SecretView

from .deps import Org, SecretName, Secrets

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
def put_secret(body: SecretPut, org_id: Org, secrets: Secrets, response: Response) -> SecretView:
    """Create or replace a secret (201 created, 200 replaced); the value is never
    returned by any endpoint."""
    out, created = secrets.put(org_id, body.name, body.value)
    if not created:
        response.status_code = 200
    return out


@router.get("/v1/secrets", response_model=list[SecretView])
def list_secrets(org_id: Org, secrets: Secrets) -> list[SecretView]:
    """Names and times of every secret of the org."""
    return secrets.list_all(org_id)


@router.delete("/v1/secrets/{name}", status_code=204)
def delete_secret(name: SecretName, org_id: Org, secrets: Secrets) -> Response:
    """Delete a secret; runs that name it can no longer start."""
    secrets.delete(org_id, name)
    return Response(status_code=204)
