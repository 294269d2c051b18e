"""The package's deliberate public surface."""

from __future__ import annotations

import subprocess
import sys

import sylphx

EXPECTED = {
    "SecretView",
    "SecretsClient",
    "OrgView",
    "QuotaExceeded",
    "Unauthorized",
    "UsageClient",
    "UsageReport",
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
    "PayloadTooLarge",
    "Run",
    "RunList",
    "RunSpec",
    "RunState",
    "RunView",
    "RunsClient",
    "ServerUnavailable",
    "StorageFull",
    "StoreUnavailable",
    "ShardState",
    "ShardView",
    "SylphxError",
    "TransportError",
    "Unschedulable",
    "ValidationError",
    "VolumeMount",
    "VolumeView",
    "VolumesClient",
    "__version__",
    "create_client",
}


def test_all_is_the_public_surface() -> None:
    assert set(sylphx.__all__) == EXPECTED
    for name in sylphx.__all__:
        assert getattr(sylphx, name) is not None
    public = {n for n in dir(sylphx) if not n.startswith("_")}
    assert public <= EXPECTED | {"annotations"}


def test_every_error_is_a_sylphx_error_with_a_docstring() -> None:
    for name in sylphx.__all__:
        obj = getattr(sylphx, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sylphx.SylphxError)
            assert obj.__doc__


def test_importing_the_sdk_does_not_load_the_server() -> None:
    code = (
        "import sys, sylphx; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
