"""Fault injection: ``kill -9`` the control plane mid-run and mid-submit, on the session's store.

The server is a real subprocess; shards are real processes writing to a real shared
volume and stamping their own start and end times, which the recorded windows must match.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from serverproc import ServerProcess

pytestmark = pytest.mark.slow

SHARDS = 32
KILLS = 20
# Each shard: stamp its start, log, sleep its share, write its part and its stamps, log.
SCRIPT = (
    't0=$(date +%s.%N); echo "start $SYLPHX_SHARD_INDEX"; set -- $SLEEPS;'
    " shift $SYLPHX_SHARD_INDEX; sleep $1;"
    " echo $((SYLPHX_SHARD_INDEX * SYLPHX_SHARD_INDEX)) > /data/part-$SYLPHX_SHARD_INDEX;"
    ' echo "$SYLPHX_SHARD_ATTEMPT $t0 $(date +%s.%N)" >> /data/ran-$SYLPHX_SHARD_INDEX;'
    ' echo "end $SYLPHX_SHARD_INDEX"'
)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_kill_9_twenty_times_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(6)
    sleeps = " ".join(f"{rng.uniform(0.2, 1.5):.2f}" for _ in range(SHARDS))
    # 0.8 vCPU of nano shards: 8 at a time, so kills land on launches, runs and exits
    server = ServerProcess(tmp_path / "home", SYLPHX_LOCAL_CPUS="0.8")
    try:
        server.start()
        vol = server.http.post("/v1/volumes", json={"name": "out"}).json()
        run = server.submit(
            command=["sh", "-c", SCRIPT],
            parallelism=SHARDS,
            machine="nano",
            gangScheduling=False,
            env={"SLEEPS": sleeps},
            volumeMounts=[{"volumeId": vol["id"], "mountPath": "/data"}],
        )
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.0, 0.6))
            server.kill9()
            server.start()
        done = server.wait(run["id"])
        assert done["status"] == "succeeded", done
        assert done["aggregate"]["succeeded"] == SHARDS
        data = server.home / "volumes" / vol["id"]
        assert sum(int((data / f"part-{i}").read_text()) for i in range(SHARDS)) == sum(
            i * i for i in range(SHARDS)
        )
        for shard in server.http.get(f"/v1/runs/{run['id']}/shards").json():
            i = shard["index"]
            ran = (data / f"ran-{i}").read_text().splitlines()
            assert shard["attempts"] == 1 and len(ran) == 1, (i, ran, shard)  # exactly once
            attempt, t0, t1 = ran[0].split()
            (hist,) = shard["history"]
            assert attempt == "1" and hist["status"] == "succeeded"
            start, end = _ts(hist["startedAt"]), _ts(hist["endedAt"])
            # the recorded window holds the true one, and is no more than a moment wider
            assert 0 <= float(t0) - start < 1.0, (i, start, t0)
            assert 0 <= end - float(t1) < 1.0, (i, end, t1)
            params: dict[str, str | int] = {"shard": i}
            log = server.http.get(f"/v1/runs/{run['id']}/logs", params=params).text
            assert log == f"start {i}\nend {i}\n"
    finally:
        server.close()


def test_kill_9_during_submit_stores_whole_runs_or_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    server = ServerProcess(tmp_path / "home")
    try:
        server.start()
        outcome: list[int] = []  # HTTP status per submit; 0: the connection died
        for _ in range(6):

            def submit() -> None:
                try:
                    r = server.http.post(
                        "/v1/runs",
                        json={
                            "command": ["true"],
                            "parallelism": 256,
                            "machine": "nano",
                            "gangScheduling": False,
                        },
                    )
                    outcome.append(r.status_code)
                except httpx.TransportError:
                    outcome.append(0)

            thread = threading.Thread(target=submit)
            thread.start()
            time.sleep(rng.uniform(0.0, 0.15))
            server.kill9()
            thread.join()
            server.start()
        runs = server.http.get("/v1/runs", params={"limit": 200}).json()["items"]
        assert len(runs) >= outcome.count(201)  # every acknowledged run was kept
        for run in runs:
            assert run["aggregate"]["total"] == 256, run
            assert len(server.http.get(f"/v1/runs/{run['id']}/shards").json()) == 256
        for run in runs:
            assert server.wait(run["id"])["status"] == "succeeded"
    finally:
        server.close()


def test_kill_9_during_concurrent_submits_keeps_every_acknowledged_run(tmp_path: Path) -> None:
    """16 clients submit at once, so submits share transactions (runs.submits: group
    commit): whatever the batch a 201 came from, its run survives a kill -9 whole."""
    rng = random.Random(11)
    server = ServerProcess(tmp_path / "home")
    try:
        server.start()
        headers = dict(server.http.headers)
        acknowledged: list[str] = []
        for _ in range(3):
            stop = threading.Event()

            def client(stop: threading.Event = stop) -> None:
                with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
                    while not stop.is_set():
                        try:
                            r = c.post("/v1/runs", json={"command": ["true"], "machine": "nano"})
                        except httpx.TransportError:
                            return
                        if r.status_code == 201:
                            acknowledged.append(r.json()["id"])

            threads = [threading.Thread(target=client) for _ in range(16)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 0.8))
            server.kill9()
            stop.set()
            for thread in threads:
                thread.join()
            server.start()
        assert len(acknowledged) > 16  # the batches were exercised
        for run_id in acknowledged:  # every acknowledged run was kept, whole
            run = server.http.get(f"/v1/runs/{run_id}").json()
            assert run["aggregate"]["total"] == 1, run
        runs = server.http.get("/v1/runs", params={"limit": 200}).json()["items"]
        for run in runs:
            assert server.wait(run["id"])["status"] == "succeeded"
    finally:
        server.close()
