"""sylphx: self-hosted Distributed Batch Compute.

One call fans a command out to N indexed shards and rolls their statuses up into
one aggregate::

    from sylphx import RunsClient, create_client

    config = create_client()  # $SYLPHX_URL, else the embedded local control plane
    run = RunsClient.run_distributed(config, command=["python", "train.py"], parallelism=9)
    status = run.wait()
    print(status.status, status.succeeded)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._async_client import AsyncRun, AsyncRunsClient
    from ._async_resources import AsyncSecretsClient, AsyncUsageClient, AsyncVolumesClient
    from ._client import Run, RunsClient
    from ._errors import (
        ConflictError,
        ExecutorError,
        IllegalTransition,
        NotFound,
        PayloadTooLarge,
        QuotaExceeded,
        ServerUnavailable,
        StorageFull,
        StoreUnavailable,
        SylphxError,
        TransportError,
        Unauthorized,
        Unschedulable,
        ValidationError,
    )
    from ._resources import SecretsClient, UsageClient, VolumesClient
    from ._retrying import RetryPolicy
    from ._spec import RunSpec, VolumeMount
    from ._states import RunState, ShardState
    from ._transport import ClientConfig, create_client
    from ._views import (
        Aggregate,
        AttemptView,
        Logs,
        OrgView,
        RunList,
        RunView,
        SecretView,
        ShardView,
        UsageReport,
        VolumeView,
    )

__version__: str  # from the package metadata (pyproject.toml's version), read on first use

# Names load on first use (PEP 562), so a process that only needs a small part of the
# package (e.g. a Ray worker running a shard) does not pay for the SDK's imports.
_LAZY = {
    "AsyncRun": "._async_client",
    "AsyncRunsClient": "._async_client",
    "AsyncSecretsClient": "._async_resources",
    "AsyncUsageClient": "._async_resources",
    "AsyncVolumesClient": "._async_resources",
    "Run": "._client",
    "RunsClient": "._client",
    "SecretsClient": "._resources",
    "UsageClient": "._resources",
    "VolumesClient": "._resources",
    "RetryPolicy": "._retrying",
    "ConflictError": "._errors",
    "ExecutorError": "._errors",
    "IllegalTransition": "._errors",
    "NotFound": "._errors",
    "PayloadTooLarge": "._errors",
    "QuotaExceeded": "._errors",
    "ServerUnavailable": "._errors",
    "StorageFull": "._errors",
    "StoreUnavailable": "._errors",
    "SylphxError": "._errors",
    "TransportError": "._errors",
    "Unauthorized": "._errors",
    "Unschedulable": "._errors",
    "ValidationError": "._errors",
    "RunSpec": "._spec",
    "VolumeMount": "._spec",
    "RunState": "._states",
    "ShardState": "._states",
    "ClientConfig": "._transport",
    "create_client": "._transport",
    "Aggregate": "._views",
    "AttemptView": "._views",
    "Logs": "._views",
    "OrgView": "._views",
    "RunList": "._views",
    "RunView": "._views",
    "SecretView": "._views",
    "ShardView": "._views",
    "UsageReport": "._views",
    "VolumeView": "._views",
}

__all__ = [
    "Aggregate",
    "AsyncRun",
    "AsyncRunsClient",
    "AsyncSecretsClient",
    "AsyncUsageClient",
    "AsyncVolumesClient",
    "AttemptView",
    "ClientConfig",
    "ConflictError",
    "ExecutorError",
    "IllegalTransition",
    "Logs",
    "NotFound",
    "OrgView",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RetryPolicy",
    "Run",
    "RunList",
    "RunSpec",
    "RunState",
    "RunView",
    "RunsClient",
    "SecretView",
    "SecretsClient",
    "ServerUnavailable",
    "ShardState",
    "ShardView",
    "StorageFull",
    "StoreUnavailable",
    "SylphxError",
    "TransportError",
    "Unauthorized",
    "Unschedulable",
    "UsageClient",
    "UsageReport",
    "ValidationError",
    "VolumeMount",
    "VolumeView",
    "VolumesClient",
    "__version__",
    "create_client",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one version string: the installed distribution's
        from importlib.metadata import version

        globals()[name] = value = version("sylphx")
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sylphx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
