"""The Python SDK (sync and async) against a real control plane on loopback."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from conftest import Server
from sylphx import (
    AsyncRunsClient,
    ClientConfig,
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
    tmp_path.chmod(0o755)  # shards run as an unprivileged user: pytest's dirs are 0700
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
    run.delete()  # an ended run: gone, with its shards and logs
    with pytest.raises(NotFound):
        RunsClient.get(config, run.id)


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
    await run.delete()
    with pytest.raises(NotFound):
        await AsyncRunsClient.get(config, run.id)


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


# -- wait(): long-polls ---------------------------------------------------------------------
SLOW_POLL = 30.0  # a wait() that polled plainly would sleep this long between looks


def test_wait_long_polls_and_returns_when_the_run_ends(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    seen: list[httpx.Request] = []
    config.http().event_hooks["request"].append(seen.append)
    run = RunsClient.run(config, command=["sh", "-c", "sleep 0.5"], machine="nano")
    start = time.monotonic()
    assert run.wait(timeout=120, poll_interval=SLOW_POLL).status is RunState.SUCCEEDED
    assert time.monotonic() - start < SLOW_POLL / 2  # no poll interval was slept
    gets = [r for r in seen if r.method == "GET"]
    assert gets and all("wait" in r.url.params for r in gets)
    assert 0 < float(gets[0].url.params["wait"]) <= 60
    with pytest.raises(ValidationError, match="wait: must be a number of seconds"):
        run.refresh(wait=61)
    assert run.refresh(wait=5).status is RunState.SUCCEEDED  # terminal: answered at once
    config.close()


def test_wait_timeout_is_honoured_with_long_polls(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    run = RunsClient.run(config, command=["sleep", "60"], machine="nano")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="is still"):
        run.wait(timeout=0.5, poll_interval=SLOW_POLL)
    assert 0.45 <= time.monotonic() - start < SLOW_POLL / 2
    run.cancel()
    config.close()


@pytest.mark.anyio
async def test_async_wait_long_polls(server: Server) -> None:
    config = create_client(server.url, token=server.token)
    run = await AsyncRunsClient.run(config, command=["sh", "-c", "sleep 0.5"], machine="nano")
    start = time.monotonic()
    status = await run.wait(timeout=120, poll_interval=SLOW_POLL)
    assert status.status is RunState.SUCCEEDED
    assert time.monotonic() - start < SLOW_POLL / 2


def _older_server(server: Server, *, refuse: bool) -> Callable[[httpx.Request], httpx.Response]:
    """A proxy to ``server`` that behaves like a server without long-polls: it refuses
    ``wait`` with a 422 (``refuse``) or ignores it and answers at once."""
    upstream = server.client(server.token)

    def handle(request: httpx.Request) -> httpx.Response:
        if "wait" in request.url.params and refuse:
            body = {
                "error": "validation_error",
                "message": "wait: is not a known field. Fix: remove it",
                "details": [{"field": "wait", "rule": "is not a known field", "fix": "remove"}],
            }
            return httpx.Response(422, json=body)
        params = {k: v for k, v in request.url.params.items() if k != "wait"}
        got = upstream.request(
            request.method,
            request.url.path,
            params=params,
            content=request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        )
        return httpx.Response(
            got.status_code, content=got.content, headers={"Content-Type": "application/json"}
        )

    return handle


@pytest.mark.parametrize("refuse", [True, False])
def test_wait_against_a_server_without_long_polls_polls_plainly(
    server: Server, monkeypatch: pytest.MonkeyPatch, refuse: bool
) -> None:
    handler = _older_server(server, refuse=refuse)
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    older = httpx.Client(base_url=server.url, transport=httpx.MockTransport(recording))
    monkeypatch.setattr(ClientConfig, "http", lambda self: older)
    config = create_client(server.url, token=server.token)
    run = RunsClient.run(config, command=["sh", "-c", "sleep 0.5"], machine="nano")
    assert run.wait(timeout=60, poll_interval=0.2).status is RunState.SUCCEEDED
    gets = [r for r in seen if r.method == "GET"]
    with_wait = [r for r in gets if "wait" in r.url.params]
    if refuse:
        assert len(with_wait) == 1 and len(gets) > 1  # asked once, then plain GETs
    else:
        assert len(with_wait) == len(gets)
    assert len(gets) < 25  # paced by poll_interval: ~0.5 s of running, not a busy loop


@pytest.mark.anyio
async def test_async_wait_against_a_server_that_refuses_wait(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _older_server(server, refuse=True)
    seen: list[httpx.Request] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await anyio.to_thread.run_sync(handler, request)

    def older(self: ClientConfig) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=server.url, transport=httpx.MockTransport(recording))

    monkeypatch.setattr(ClientConfig, "async_http", older)
    config = create_client(server.url, token=server.token)
    run = await AsyncRunsClient.run(config, command=["sh", "-c", "sleep 0.5"], machine="nano")
    assert (await run.wait(timeout=60, poll_interval=0.2)).status is RunState.SUCCEEDED
    with_wait = [r for r in seen if "wait" in r.url.params]
    assert len(with_wait) == 1 and len(seen) > 2


def test_stream_logs_cuts_lines_at_newline_only(server: Server) -> None:
    """A line holding U+2028, U+0085 or a lone carriage return (a progress bar) is one
    line, as the shard wrote it; a CRLF ending is dropped like a LF."""
    config = create_client(server.url, token=server.token)
    run = RunsClient.run(
        config,
        command=["printf", "a\u2028b\u0085c\rd\r\nlast"],
        machine="nano",
        timeout_seconds=60,
    )
    run.wait(timeout=60)
    assert list(run.stream_logs(shard=0, follow=False)) == ["a\u2028b\u0085c\rd", "last"]
    config.close()
