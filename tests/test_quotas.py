"""Plan quotas: per-job parallelism, the org concurrent-shard budget, actionable 429s."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import Server
from sylphx._server.tenancy.plans import PLANS


def test_per_job_ceiling_per_plan(server: Server) -> None:
    free = server.client(server.new_org("freebie", plan="free"))
    r = free.post("/v1/runs", json={"command": ["true"], "parallelism": 2})
    assert r.status_code == 429
    body = r.json()
    assert body["error"] == "quota_exceeded"
    assert body["message"] == (
        "parallelism 2 exceeds the free plan's per-job ceiling of 1 shard(s). Fix: reduce"
        " parallelism to <= 1, or upgrade the plan (pro, team, enterprise)."
    )
    assert body["details"][0] | {} == body["details"][0]
    assert {k: body["details"][0][k] for k in ("limit", "max", "requested")} == {
        "limit": "perJobParallelism",
        "max": 1,
        "requested": 2,
    }
    assert "retry-after" not in r.headers  # waiting does not help
    assert free.post("/v1/runs", json={"command": ["true"]}).status_code == 201
    for plan in ("pro", "team", "enterprise"):
        assert PLANS[plan].max_parallelism == 256
        client = server.client(server.new_org(f"big-{plan}", plan=plan))
        ok = client.post(
            "/v1/runs",
            json={
                "command": ["true"],
                "parallelism": 256,
                "machine": "nano",
                "gangScheduling": False,
            },
        )
        assert ok.status_code == 201, ok.text
        client.post(f"/v1/runs/{ok.json()['id']}/cancel")


def test_concurrent_budget_429_body_and_release(server: Server) -> None:
    client = server.client(server.new_org("small-team", plan="pro", concurrent_shards=3))
    first = client.post(
        "/v1/runs", json={"command": ["sleep", "0.6"], "parallelism": 2, "machine": "nano"}
    ).json()
    r = client.post("/v1/runs", json={"command": ["true"], "parallelism": 2, "machine": "nano"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30"
    body = r.json()
    assert body["message"] == (
        "org small-team has 2 of its 3 concurrent shards in use (1 free) and this run asks for"
        " 2. Fix: reduce parallelism to <= 1, wait for 1 running shard(s) to finish, or upgrade"
        " the plan (team, enterprise)."
    )
    detail = body["details"][0]
    assert (detail["limit"], detail["max"], detail["current"], detail["requested"]) == (
        "orgConcurrentShards",
        3,
        2,
        2,
    )
    assert client.get("/v1/org").json()["shardsInUse"] == 2
    # the budget comes back as the shards finish
    server.wait_for(lambda: client.get(f"/v1/runs/{first['id']}").json()["status"] == "succeeded")
    assert client.get("/v1/org").json()["shardsInUse"] == 0
    again = client.post("/v1/runs", json={"command": ["true"], "parallelism": 2, "machine": "nano"})
    assert again.status_code == 201


def test_two_hundred_concurrent_submits_never_overshoot(server: Server) -> None:
    token = server.new_org("racers", plan="pro", concurrent_shards=50)

    def submit(_: int) -> int:
        with httpx.Client(
            base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {token}"}
        ) as c:
            r = c.post("/v1/runs", json={"command": ["sleep", "60"], "machine": "nano"})
            return r.status_code

    with ThreadPoolExecutor(max_workers=64) as pool:
        codes = list(pool.map(submit, range(200)))
    assert codes.count(201) == 50 and codes.count(429) == 150
    client = server.client(token)
    assert client.get("/v1/org").json()["shardsInUse"] == 50
    for run in client.get("/v1/runs", params={"limit": 200}).json()["items"]:
        client.post(f"/v1/runs/{run['id']}/cancel")


def test_gpu_tiers_are_refused_at_admission(server: Server) -> None:
    r = server.http.post("/v1/runs", json={"command": ["true"], "machine": "gpu-small"})
    assert r.status_code == 422
    assert "GPU node pools are not yet available" in r.json()["message"]
    assert server.http.get("/v1/runs").json()["items"] == []
    assert server.http.get("/v1/usage").json()["computeSeconds"] == 0


def test_cli_prints_the_429_as_is_and_fails(server: Server) -> None:
    token = server.new_org("cli-free", plan="free")
    env = {**os.environ, "SYLPHX_URL": server.url, "SYLPHX_TOKEN": token}
    r = subprocess.run(
        [sys.executable, "-m", "sylphx", "run", "-n", "4", "--", "true"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode != 0
    assert "parallelism 4 exceeds the free plan's per-job ceiling of 1 shard(s)" in r.stderr
    assert "upgrade the plan" in r.stderr
