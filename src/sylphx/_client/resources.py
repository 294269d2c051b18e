# Generated from async_resources.py by tools/unasync_sdk.py (make sdk): edit that file, not this.
"""The SDK's volumes, usage and secrets clients (the runs client: ``async_runs.py``,
whose docstring says how the synchronous twin of both files is generated)."""

from __future__ import annotations

import builtins
from datetime import datetime
from urllib.parse import quote

from sylphx._core.views import OrgView, SecretView, UsageReport, VolumeView

from .calls import _request
from .transport import ClientConfig, check, json_body, parse_list, parse_model

__all__ = ["SecretsClient", "UsageClient", "VolumesClient"]


class VolumesClient:
    """Create, list and delete the ReadWriteMany volumes runs mount."""

    @staticmethod
    def create(config: ClientConfig, name: str | None = None) -> VolumeView:
        """Create a volume; mount it with ``volume_mounts=[{"volume_id": v.id, ...}]``."""
        body = json_body(_request(config, "POST", "/v1/volumes", json={"name": name}))
        return parse_model(VolumeView, body, "volume")

    @staticmethod
    def list(config: ClientConfig) -> builtins.list[VolumeView]:
        """Every volume."""
        body = json_body(_request(config, "GET", "/v1/volumes"))
        return parse_list(VolumeView, body, "volume")

    @staticmethod
    def delete(config: ClientConfig, volume_id: str) -> None:
        """Delete a volume (ConflictError while a live run mounts it)."""
        check(_request(config, "DELETE", f"/v1/volumes/{quote(volume_id, safe='')}"))


class UsageClient:
    """The caller's org, its limits, and its metered compute-seconds."""

    @staticmethod
    def org(config: ClientConfig) -> OrgView:
        """The org behind the API key, with its plan limits and shards in use."""
        return parse_model(OrgView, json_body(_request(config, "GET", "/v1/org")), "org")

    @staticmethod
    def report(
        config: ClientConfig, from_: datetime | None = None, to: datetime | None = None
    ) -> UsageReport:
        """Compute-seconds by run and tier over ``[from_, to)`` (default: this month),
        credits applied first, and the billable remainder."""
        params = {k: v.isoformat() for k, v in (("from", from_), ("to", to)) if v is not None}
        body = json_body(_request(config, "GET", "/v1/usage", params=params))
        return parse_model(UsageReport, body, "usage report")


class SecretsClient:
    """The org's scoped secrets: runs name them in ``secrets=[...]`` to get them as env vars."""

    @staticmethod
    def set(config: ClientConfig, name: str, value: str) -> SecretView:
        """Create or replace a secret (its value is never returned)."""
        body = {"name": name, "value": value}
        data = json_body(_request(config, "POST", "/v1/secrets", json=body, idempotent=True))
        return parse_model(SecretView, data, "secret")

    @staticmethod
    def list(config: ClientConfig) -> builtins.list[SecretView]:
        """Names and times of every secret."""
        body = json_body(_request(config, "GET", "/v1/secrets"))
        return parse_list(SecretView, body, "secret")

    @staticmethod
    def delete(config: ClientConfig, name: str) -> None:
        """Delete a secret; runs that name it can no longer start."""
        check(_request(config, "DELETE", f"/v1/secrets/{quote(name, safe='')}"))
