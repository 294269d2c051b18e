"""The Python SDK (sync and async) against a real control plane on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Server
from sylphx import (
    AsyncRunsClient,
    NotFound,
    RunsClient,
    RunState,
    ShardState,
    Unschedulable,
    ValidationError,
    VolumesClient,
    create_client,
)


def test_run_distributed_wait_shards_logs(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    run = RunsClient.run_distributed(
        config,
        command=[
            "sh",
            "-c",
            'echo "fold $SYLPHX_SHARD_INDEX"; echo oops >&2; [ "$SYLPHX_SHARD_INDEX" != 3 ]',
        ],
        parallelism=5,
        machine="nano",
        gang_scheduling=False,
        backoff_limit_per_index=1,
        timeout_seconds=600,
        env={"MODE": "test"},
    )
    assert run.id.startswith("wrk_")
    status = run.wait(timeout=60)
    assert status.status is RunState.PARTIAL
    assert (status.succeeded, status.failed, status.total) == (4, 1, 5)
    shards = run.shards()
    failures = [s for s in shards if s.status is ShardState.FAILED]
    assert [f.index for f in failures] == [3] and failures[0].attempts == 2
    logs = run.logs(shard=failures[0].index)
    assert (logs.stdout, logs.stderr) == ("fold 3\n", "oops\n")
    assert list(run.stream_logs(shard=1, follow=False)) == ["fold 1"]
    assert RunsClient.get(config, run.id).view.spec.backoff_limit_per_index == 1
    assert run.id in [r.id for r in RunsClient.list(config).items]
    config.close()


def test_single_shard_run_and_working_dir_default(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello.sh").write_text("echo hello from $(pwd)\n")
    config = create_client(server.url, token=server.token)
    run = RunsClient.run(config, command=["sh", "hello.sh"])
    assert run.wait(timeout=30).status is RunState.SUCCEEDED
    assert run.logs(shard=0).stdout == f"hello from {tmp_path}\n"
    assert run.view.spec.parallelism == 1


def test_errors_are_typed_and_carry_the_message(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    with pytest.raises(ValidationError, match="requires gangScheduling: false") as err:
        RunsClient.run_distributed(
            config, command=["true"], parallelism=4, backoff_limit_per_index=2
        )
    assert err.value.details[0]["field"] == "backoffLimitPerIndex"
    with pytest.raises(Unschedulable, match="needs 18 vCPU / 36 GiB at once"):
        RunsClient.run_distributed(config, command=["true"], parallelism=9, machine="large")
    with pytest.raises(NotFound, match="run 'wrk_missing' not found"):
        RunsClient.get(config, "wrk_missing")


def test_cancel_through_the_sdk(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    run = RunsClient.run_distributed(config, command=["sleep", "60"], parallelism=2, machine="nano")
    server.wait_for(lambda: run.refresh().aggregate.running == 2)
    run.cancel()
    assert run.wait(timeout=15).status is RunState.CANCELLED


@pytest.mark.anyio
async def test_async_client(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    run = await AsyncRunsClient.run_distributed(
        config,
        command=["sh", "-c", "echo async $SYLPHX_SHARD_INDEX"],
        parallelism=3,
        machine="nano",
    )
    status = await run.wait(timeout=30)
    assert status.status is RunState.SUCCEEDED and status.succeeded == 3
    assert [s.index for s in await run.shards()] == [0, 1, 2]
    assert (await run.logs(shard=2)).stdout == "async 2\n"
    lines = [line async for line in run.stream_logs(shard=1, follow=True)]
    assert lines == ["async 1"]
    with pytest.raises(NotFound):
        await AsyncRunsClient.get(config, "wrk_missing")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_seed_sdk_example_on_the_embedded_default(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec page's train-distributed example, transcribed to Python, as written."""
    work = tmp_path / "job"
    work.mkdir()
    (work / "train.py").write_text(
        "import os\n"
        'shard = int(os.environ["SYLPHX_SHARD_INDEX"])\n'
        'count = int(os.environ["SYLPHX_SHARD_COUNT"])\n'
        "symbols = [f'SYM{i}' for i in range(100)]\n"
        "mine = symbols[shard::count]\n"
        'open(f"/cache/scores-{shard}.txt", "w").write(",".join(mine))\n'
    )
    monkeypatch.chdir(work)
    config = create_client(os.environ.get("SYLPHX_URL"))  # unset: the embedded default
    volume = VolumesClient.create(config, name="cache")
    monkeypatch.setenv("CACHE_VOLUME_ID", volume.id)
    try:
        folds = [0, 1, 2, 3, 4, 5, 6, 7, 8]
        run = RunsClient.run_distributed(
            config,
            image=None,  # the local executor runs the command on the host
            command=["python", "train.py"],
            parallelism=len(folds),
            machine="large",
            gang_scheduling=False,
            backoff_limit_per_index=12,
            volume_mounts=[{"volumeId": os.environ["CACHE_VOLUME_ID"], "mountPath": "/cache"}],
            timeout_seconds=7200,
        )
        status = run.wait()
        shards = run.shards()
        failures = [s for s in shards if s.status == "failed"]
        assert failures == [], run.logs(shard=failures[0].index).stderr
        assert status.status == "succeeded" and status.succeeded == 9
        parts = sorted((clean_env / "volumes" / volume.id).iterdir())
        assert [p.name for p in parts] == [f"scores-{i}.txt" for i in range(9)]
        merged = sorted(",".join(p.read_text() for p in parts).split(","))
        assert merged == sorted(f"SYM{i}" for i in range(100))
    finally:
        config.close()
