"""What the routes are given: the control plane, the caller's org, bounded ids in URLs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.concurrency import run_in_threadpool

from sylphx._core import limits
from sylphx._core.limits import Text
from sylphx._server.plane import ControlPlane
from sylphx._server.tenancy import orgs

__all__ = ["Org", "Plane", "RunId", "SecretName", "VolumeId", "current_org", "plane_of"]


def plane_of(request: Request) -> ControlPlane:
    """The control plane the app was created around."""
    plane: ControlPlane = request.app.state.plane
    return plane


async def current_org(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The caller's org id, from ``Authorization: Bearer <key>`` (401 otherwise). A key's
    store lookup is reused for ``SYLPHX_AUTH_CACHE_SECONDS`` (see :mod:`..readcache`)."""
    plane = plane_of(request)
    key_hash = orgs.bearer_hash(authorization)
    org_id = plane.keys.get(key_hash)
    if org_id is None:
        checked_at = plane.keys.now()
        org_id = await run_in_threadpool(_org_of_key, plane, key_hash)
        plane.keys.put(key_hash, org_id, checked_at)
    return org_id


def _org_of_key(plane: ControlPlane, key_hash: str) -> str:
    with plane.reads() as s:
        return orgs.org_of_key(s, key_hash)


Plane = Annotated[ControlPlane, Depends(plane_of)]
Org = Annotated[str, Depends(current_org)]

# Ids in URLs: bounded, NUL-free UTF-8 (what no id can be is a 422, an unknown id a 404).
RunId = Annotated[Text, Path(max_length=limits.MAX_ID_BYTES)]
VolumeId = Annotated[Text, Path(max_length=limits.MAX_ID_BYTES)]
SecretName = Annotated[Text, Path(max_length=limits.MAX_NAME_BYTES)]
