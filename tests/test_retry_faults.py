"""A retry held to the same crash safety as a submit (issue #20): ``kill -9`` of the
control plane while a retry is being taken, the client sending it again with the same
Idempotency-Key (as the SDK does), loses nothing and runs nothing twice."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from serverproc import ServerProcess
from test_retry import MARK, _marks

pytestmark = pytest.mark.slow


def test_kill_9_while_a_retry_is_taken_reopens_the_run_once(tmp_path: Path) -> None:
    rng = random.Random(20)
    server = ServerProcess(tmp_path / "home")
    try:
        server.start()
        vol = server.http.post("/v1/volumes", json={"name": "marks"}).json()["id"]
        data = server.home / "volumes" / vol
        for i in (1, 3, 5):
            (data / f"broken-{i}").touch()
        run = server.submit(
            command=["sh", "-c", MARK],
            parallelism=6,
            machine="nano",
            gangScheduling=False,
            backoffLimitPerIndex=0,
            volumeMounts=[{"volumeId": vol, "mountPath": "/v"}],
        )
        assert server.wait(run["id"])["status"] == "partial"
        for p in data.glob("broken-*"):
            p.unlink()
        key = {"Idempotency-Key": uuid.uuid4().hex}  # one retry, sent until it is answered
        answered: list[int] = []
        for _ in range(4):

            def send() -> None:
                try:
                    r = server.http.post(f"/v1/runs/{run['id']}/retry", headers=key)
                    answered.append(r.status_code)
                except httpx.TransportError:
                    answered.append(0)

            thread = threading.Thread(target=send)
            thread.start()
            time.sleep(rng.uniform(0.0, 0.1))
            server.kill9()
            thread.join()
            server.start()
        again = server.http.post(f"/v1/runs/{run['id']}/retry", headers=key)
        assert again.status_code == 200, again.text  # the same retry: answered, not a 409
        done = server.wait(run["id"])
        assert done["status"] == "succeeded" and done["reopened"] == 1, (done, answered)
        deadline = time.monotonic() + 10
        while _marks(data) != {(i, 1) for i in range(6)} | {(1, 2), (3, 2), (5, 2)}:
            assert time.monotonic() < deadline, _marks(data)  # exactly once each
            time.sleep(0.1)
        shards = server.http.get(f"/v1/runs/{run['id']}/shards").json()
        assert [s["attempts"] for s in shards] == [1, 2, 1, 2, 1, 2]
    finally:
        server.close()
