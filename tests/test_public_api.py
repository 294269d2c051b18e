"""The package's deliberate public surface."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

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
    "AsyncSecretsClient",
    "AsyncUsageClient",
    "RetryPolicy",
    "RetryBackoff",
    "AttemptView",
    "ClientConfig",
    "ConflictError",
    "ExecutorError",
    "FailureRule",
    "FailureGroup",
    "Quote",
    "MergeSpec",
    "IllegalTransition",
    "LogLine",
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
    "SpendLimitReached",
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


def test_a_ray_worker_running_a_shard_does_not_load_pydantic_or_the_server() -> None:
    """Every new Ray worker imports the task body's module before its first shard (P6
    starts ~150 of them a run): pydantic alone was ~60 ms of CPU of that, through the
    path rules' quoting helper."""
    code = (
        "import sys; import sylphx._server.executors.ray.remote; "
        "print(sorted(m for m in ('pydantic', 'fastapi', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(getattr(cls, name))
    } | {name: None for name, member in vars(cls).items() if isinstance(member, property)}  # type: ignore[misc]


def test_every_sync_method_has_an_async_twin_with_the_same_signature() -> None:
    pairs = [
        (sylphx.Run, sylphx.AsyncRun),
        (sylphx.RunsClient, sylphx.AsyncRunsClient),
        (sylphx.VolumesClient, sylphx.AsyncVolumesClient),
        (sylphx.UsageClient, sylphx.AsyncUsageClient),
        (sylphx.SecretsClient, sylphx.AsyncSecretsClient),
    ]
    for sync, twin in pairs:
        ours, theirs = _methods(sync), _methods(twin)
        assert set(ours) == set(theirs), (sync, set(ours) ^ set(theirs))
        for name, signature in ours.items():
            if signature is None:  # a property
                continue
            params = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
            twins = [(p.name, p.kind, p.default) for p in theirs[name].parameters.values()]
            assert params == twins, (sync, name)
            is_coroutine = inspect.iscoroutinefunction(getattr(twin, name))
            assert is_coroutine or "Iterator" in str(signature.return_annotation), (twin, name)


def test_the_sync_sdk_is_what_unasync_generates_from_the_async_one() -> None:
    tool = Path(__file__).parents[1] / "tools" / "unasync_sdk.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
