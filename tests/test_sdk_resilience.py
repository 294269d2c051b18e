"""The SDK and CLI ride through a control-plane restart; submits are idempotent; a 429 can
be waited out (issue #18, item 4). Real server processes, killed with SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from serverproc import ServerProcess
from sylphx import (
    AsyncRunsClient,
    NotFound,
    QuotaExceeded,
    RetryPolicy,
    RunsClient,
    RunState,
    ServerUnavailable,
    create_client,
)
from sylphx._server.store import OrgRow, RunRow, make_engine, session_factory


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "home")
    server.start()
    try:
        yield server
    finally:
        server.close()


def _token(proc: ServerProcess) -> str:
    return str(proc.http.headers["Authorization"]).removeprefix("Bearer ")


def _restart_after(proc: ServerProcess, delay: float, down: float) -> threading.Thread:
    """SIGKILL the control plane after ``delay`` s and start it again ``down`` s later."""

    def bounce() -> None:
        time.sleep(delay)
        proc.kill9()
        time.sleep(down)
        proc.start()

    thread = threading.Thread(target=bounce)
    thread.start()
    return thread


def test_run_wait_rides_through_a_restart(proc: ServerProcess) -> None:
    config = create_client(proc.url, token=_token(proc))
    run = RunsClient.run_distributed(
        config, command=["sh", "-c", "sleep 4; echo done"], parallelism=2, machine="nano"
    )
    bounce = _restart_after(proc, delay=1.0, down=2.0)
    status = run.wait(timeout=90)  # was: ServerUnavailable two seconds in
    bounce.join()
    assert status.status is RunState.SUCCEEDED and status.succeeded == 2
    assert run.logs(shard=1).stdout == "done\n"


def test_async_wait_rides_through_a_restart(proc: ServerProcess) -> None:
    async def main() -> RunState:
        config = create_client(proc.url, token=_token(proc))
        run = await AsyncRunsClient.run_distributed(
            config, command=["sh", "-c", "sleep 4"], parallelism=2, machine="nano"
        )
        bounce = _restart_after(proc, delay=1.0, down=2.0)
        status = await run.wait(timeout=90)
        await anyio.to_thread.run_sync(bounce.join)
        await config.aclose()
        return status.status

    assert anyio.run(main) is RunState.SUCCEEDED


def test_cli_follow_rides_through_a_restart(proc: ServerProcess) -> None:
    env = {**os.environ, "SYLPHX_URL": proc.url, "SYLPHX_TOKEN": _token(proc)}
    follow = subprocess.Popen(
        [sys.executable, "-m", "sylphx", "run", "-n", "2", "--machine", "nano", "--follow",
         "--", "sh", "-c", "sleep 4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    bounce = _restart_after(proc, delay=1.5, down=2.0)
    out, err = follow.communicate(timeout=120)
    bounce.join()
    assert follow.returncode == 0, (out, err)
    assert "succeeded" in out


def test_a_repeated_submit_returns_the_run_it_made(proc: ServerProcess) -> None:
    spec = {"command": ["true"], "parallelism": 2, "machine": "nano"}
    key = {"Idempotency-Key": "abc-123"}
    first = proc.http.post("/v1/runs", json=spec, headers=key)
    again = proc.http.post("/v1/runs", json=spec, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    other = proc.http.post("/v1/runs", json=spec | {"parallelism": 3}, headers=key)
    assert other.status_code == 409 and other.json()["details"][0]["field"] == "Idempotency-Key"
    plain = [proc.http.post("/v1/runs", json=spec).json()["id"] for _ in range(2)]
    assert len(set(plain)) == 2  # no key: every submit is a new run
    engine = make_engine(proc.env["SYLPHX_DATABASE_URL"])
    try:
        with session_factory(engine)() as s:
            assert s.scalar(select(func.count()).select_from(RunRow)) == 3
    finally:
        engine.dispose()


def test_a_submit_whose_answer_was_lost_is_repeated_once(proc: ServerProcess) -> None:
    """The SDK repeats a submit whose connection dropped before the answer, with the same
    key: the control plane stores one run."""
    sent: list[bytes] = []
    real = httpx.HTTPTransport()

    class DropFirstAnswer(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)
            if request.method == "POST":
                sent.append(request.headers["idempotency-key"].encode())
                if len(sent) == 1:
                    response.read()
                    raise httpx.ReadError("connection lost before the answer", request=request)
            return response

    config = create_client(proc.url, token=_token(proc))
    config._http = httpx.Client(  # type: ignore[attr-defined]
        base_url=proc.url, transport=DropFirstAnswer(), headers=config.headers
    )
    run = RunsClient.run(config, command=["true"], machine="nano")
    assert len(sent) == 2 and sent[0] == sent[1]
    listed = proc.http.get("/v1/runs").json()["items"]
    assert [r["id"] for r in listed] == [run.id]


def test_quota_429_is_raised_unless_the_caller_waits_for_it(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "home")
    proc.start()
    try:
        engine = make_engine(proc.env["SYLPHX_DATABASE_URL"])
        with session_factory(engine).begin() as s:
            org = s.get(OrgRow, "org_test")
            assert org is not None
            org.concurrent_shards = 2
        engine.dispose()
        busy = proc.submit(command=["sleep", "3"], parallelism=2, machine="nano")
        config = create_client(proc.url, token=_token(proc))
        with pytest.raises(QuotaExceeded) as caught:
            RunsClient.run(config, command=["true"], machine="nano")
        assert caught.value.retry_after is not None
        patient = create_client(proc.url, token=_token(proc), retry=RetryPolicy(wait_for_quota=120))
        run = RunsClient.run(patient, command=["true"], machine="nano")  # after `busy` ends
        assert proc.get(busy["id"])["status"] == "succeeded"
        assert run.wait(timeout=60).status is RunState.SUCCEEDED
    finally:
        proc.close()


def test_retries_are_bounded_and_4xx_are_not_repeated(proc: ServerProcess) -> None:
    config = create_client(proc.url, token=_token(proc), retry=RetryPolicy(timeout=2))
    calls: list[str] = []
    real = httpx.HTTPTransport()

    class Counting(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            calls.append(request.url.path)
            return real.handle_request(request)

    config._http = httpx.Client(  # type: ignore[attr-defined]
        base_url=proc.url, transport=Counting(), headers=config.headers
    )
    with pytest.raises(NotFound):
        RunsClient.get(config, "wrk_0000000000000000")
    assert len(calls) == 1  # a 404 is the caller's to fix: asked once
    proc.kill9()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        RunsClient.get(config, "wrk_0000000000000000")
    assert len(calls) > 1 and time.monotonic() - started < 15  # repeated, within the bound
