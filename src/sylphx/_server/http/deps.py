"""What the routes are given: the services the control plane built, the caller's org,
bounded ids in URLs. The providers are coroutines: they only look a service up, so they
need no hop to the thread pool."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from sylphx._core import limits
from sylphx._core.limits import Text
from sylphx._server.plane import ControlPlane
from sylphx._server.runs.account import AccountService, SecretService
from sylphx._server.runs.facade import RunService
from sylphx._server.runs.volumes import VolumeService

from .edge import checked_hash

__all__ = [
    "Account",
    "Org",
    "RunId",
    "Runs",
    "SecretName",
    "Secrets",
    "VolumeId",
    "Volumes",
    "account_service",
    "current_org",
    "plane_of",
    "run_service",
    "secret_service",
    "volume_service",
]


def plane_of(request: Request) -> ControlPlane:
    """The control plane the app was created around."""
    plane: ControlPlane = request.app.state.plane
    return plane


async def run_service(request: Request) -> RunService:
    """The runs: submit, read, list, shards, cancel, delete, logs."""
    return plane_of(request).runs


async def volume_service(request: Request) -> VolumeService:
    """The org's volumes."""
    return plane_of(request).volumes


async def secret_service(request: Request) -> SecretService:
    """The org's secrets."""
    return plane_of(request).secrets


async def account_service(request: Request) -> AccountService:
    """Keys to orgs, the org's view and its usage."""
    return plane_of(request).account


async def current_org(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The caller's org id, from ``Authorization: Bearer <key>`` (401 otherwise); see
    :meth:`AccountService.authenticate`. An API write's key was hashed and checked at
    the edge already, before its body was read: that hash is asked again."""
    account = plane_of(request).account
    key_hash = checked_hash(request.scope, authorization)
    if key_hash is not None:
        return await account.org_of_hash(key_hash)
    return await account.authenticate(authorization)


Runs = Annotated[RunService, Depends(run_service)]
Volumes = Annotated[VolumeService, Depends(volume_service)]
Secrets = Annotated[SecretService, Depends(secret_service)]
Account = Annotated[AccountService, Depends(account_service)]
Org = Annotated[str, Depends(current_org)]

# Ids in URLs: bounded, NUL-free UTF-8 (what no id can be is a 422, an unknown id a 404).
RunId = Annotated[Text, Path(max_length=limits.MAX_ID_BYTES)]
VolumeId = Annotated[Text, Path(max_length=limits.MAX_ID_BYTES)]
SecretName = Annotated[Text, Path(max_length=limits.MAX_NAME_BYTES)]
