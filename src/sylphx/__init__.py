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

from ._async_client import AsyncRun, AsyncRunsClient, AsyncVolumesClient
from ._client import Run, RunsClient, SecretsClient, UsageClient, VolumesClient
from ._errors import (
    ConflictError,
    ExecutorError,
    IllegalTransition,
    NotFound,
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

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "AsyncRun",
    "AsyncRunsClient",
    "AsyncVolumesClient",
    "AttemptView",
    "ClientConfig",
    "ConflictError",
    "ExecutorError",
    "IllegalTransition",
    "Logs",
    "NotFound",
    "OrgView",
    "QuotaExceeded",
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
