"""sylphx: self-hosted Distributed Batch Compute.

One call fans a command out to N indexed shards and rolls their statuses up into
one aggregate::

    from sylphx import RunsClient, create_client

    config = create_client()  # $SYLPHX_URL, the current context, else the embedded one
    run = RunsClient.run_distributed(config, command=["python", "train.py"], parallelism=9)
    status = run.wait()
    print(status.status, status.succeeded)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sylphx._client.async_resources import (
        AsyncSecretsClient,
        AsyncUsageClient,
        AsyncVolumesClient,
    )
    from sylphx._client.async_runs import AsyncRun, AsyncRunsClient
    from sylphx._client.resources import SecretsClient, UsageClient, VolumesClient
    from sylphx._client.retrying import RetryPolicy
    from sylphx._client.runs import Run, RunsClient
    from sylphx._client.transport import ClientConfig, create_client
    from sylphx._core.errors import (
        ConflictError,
        ExecutorError,
        IllegalTransition,
        NotFound,
        PayloadTooLarge,
        QuotaExceeded,
        ServerUnavailable,
        SpendLimitReached,
        StorageFull,
        StoreUnavailable,
        SylphxError,
        TransportError,
        Unauthorized,
        Unschedulable,
        ValidationError,
    )
    from sylphx._core.failure import FailureRule, RetryBackoff
    from sylphx._core.merge import MergeSpec
    from sylphx._core.mounts import VolumeMount
    from sylphx._core.spec import RunSpec
    from sylphx._core.states import RunState, ShardState
    from sylphx._core.views import (
        Aggregate,
        AttemptView,
        FailureGroup,
        LogLine,
        Logs,
        OrgView,
        Quote,
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
    "AsyncRun": "sylphx._client.async_runs",
    "AsyncRunsClient": "sylphx._client.async_runs",
    "AsyncSecretsClient": "sylphx._client.async_resources",
    "AsyncUsageClient": "sylphx._client.async_resources",
    "AsyncVolumesClient": "sylphx._client.async_resources",
    "Run": "sylphx._client.runs",
    "RunsClient": "sylphx._client.runs",
    "SecretsClient": "sylphx._client.resources",
    "UsageClient": "sylphx._client.resources",
    "VolumesClient": "sylphx._client.resources",
    "RetryPolicy": "sylphx._client.retrying",
    "ConflictError": "sylphx._core.errors",
    "ExecutorError": "sylphx._core.errors",
    "IllegalTransition": "sylphx._core.errors",
    "NotFound": "sylphx._core.errors",
    "PayloadTooLarge": "sylphx._core.errors",
    "QuotaExceeded": "sylphx._core.errors",
    "ServerUnavailable": "sylphx._core.errors",
    "SpendLimitReached": "sylphx._core.errors",
    "StorageFull": "sylphx._core.errors",
    "StoreUnavailable": "sylphx._core.errors",
    "SylphxError": "sylphx._core.errors",
    "TransportError": "sylphx._core.errors",
    "Unauthorized": "sylphx._core.errors",
    "Unschedulable": "sylphx._core.errors",
    "ValidationError": "sylphx._core.errors",
    "FailureRule": "sylphx._core.failure",
    "RetryBackoff": "sylphx._core.failure",
    "MergeSpec": "sylphx._core.merge",
    "RunSpec": "sylphx._core.spec",
    "VolumeMount": "sylphx._core.mounts",
    "RunState": "sylphx._core.states",
    "ShardState": "sylphx._core.states",
    "ClientConfig": "sylphx._client.transport",
    "create_client": "sylphx._client.transport",
    "Aggregate": "sylphx._core.views",
    "AttemptView": "sylphx._core.views",
    "FailureGroup": "sylphx._core.views",
    "LogLine": "sylphx._core.views",
    "Logs": "sylphx._core.views",
    "Quote": "sylphx._core.views",
    "OrgView": "sylphx._core.views",
    "RunList": "sylphx._core.views",
    "RunView": "sylphx._core.views",
    "SecretView": "sylphx._core.views",
    "ShardView": "sylphx._core.views",
    "UsageReport": "sylphx._core.views",
    "VolumeView": "sylphx._core.views",
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
    "FailureGroup",
    "FailureRule",
    "IllegalTransition",
    "LogLine",
    "Logs",
    "MergeSpec",
    "NotFound",
    "OrgView",
    "PayloadTooLarge",
    "QuotaExceeded",
    "Quote",
    "RetryBackoff",
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
    "SpendLimitReached",
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
