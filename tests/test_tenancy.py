"""Orgs and API keys: authentication, and isolation on every endpoint."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import Server
from sylphx._server.tenancy import orgs


def test_missing_bad_and_revoked_keys_get_401(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    anon = httpx.Client(base_url=server.url)
    for method, path in [
        ("GET", "/v1/runs"),
        ("POST", "/v1/runs"),
        ("GET", "/v1/volumes"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/runs/wrk_x/logs?shard=0"),
    ]:
        r = anon.request(method, path, json={"command": ["true"]})
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in r.json()["message"]
    assert server.client("sx_not-a-key").get("/v1/runs").status_code == 401
    basic = anon.get("/v1/runs", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and "not a Bearer key" in basic.json()["message"]
    assert anon.get("/healthz").status_code == 200  # health needs no key
    now = [0.0]  # the key cache's clock, ours to move (see test_read_path)
    monkeypatch.setattr(server.plane.keys, "_clock", lambda: now[0])
    with server.plane.sessions.begin() as s:
        row, token = orgs.create_key(s, "org_test", name="short-lived", now=server.plane.now())
    assert server.client(token).get("/v1/runs").status_code == 200
    with server.plane.sessions.begin() as s:
        orgs.revoke_key(s, row.id, server.plane.now())
    now[0] += server.settings.auth_cache_seconds  # the documented bound
    r = server.client(token).get("/v1/runs")
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_another_orgs_objects_are_404_on_every_endpoint(server: Server) -> None:
    volume = server.http.post("/v1/volumes", json={"name": "mine"}).json()
    run = server.submit(
        command=["sleep", "30"],
        parallelism=2,
        machine="nano",
        volumeMounts=[{"volumeId": volume["id"], "mountPath": "/data"}],
    )
    other = server.client(server.new_org("rival"))
    rid = run["id"]
    for method, path in [
        ("GET", f"/v1/runs/{rid}"),
        ("GET", f"/v1/runs/{rid}/shards"),
        ("GET", f"/v1/runs/{rid}/logs?shard=0"),
        ("GET", f"/v1/runs/{rid}/logs?shard=0&follow=true"),
        ("POST", f"/v1/runs/{rid}/cancel"),
        ("DELETE", f"/v1/volumes/{volume['id']}"),
    ]:
        r = other.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
    assert other.get("/v1/runs").json()["items"] == []
    assert other.get("/v1/volumes").json() == []
    stolen = other.post(
        "/v1/runs",
        json={"command": ["true"], "volumeMounts": [{"volumeId": volume["id"], "mountPath": "/x"}]},
    )
    assert stolen.status_code == 404
    assert other.get("/v1/usage").json()["computeSeconds"] == 0
    # the owner still sees and controls everything
    assert server.get(rid)["status"] in ("queued", "running")
    assert server.http.post(f"/v1/runs/{rid}/cancel").status_code == 202
    assert server.wait(rid)["status"] == "cancelled"
    assert other.get("/v1/org").json()["name"] == "rival"
    assert server.http.get("/v1/org").json()["name"] == "test"


def test_keys_are_never_stored_or_logged_in_clear(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = server.new_org("secretive")
    client = server.client(token)
    run = client.post("/v1/runs", json={"command": ["echo", "hi"]}).json()
    server.wait_for(lambda: client.get(f"/v1/runs/{run['id']}").json()["status"] == "succeeded")
    home: Path = server.settings.home
    for path in home.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
            assert token[3:].encode() not in path.read_bytes(), path
    assert token not in caplog.text


def test_embedded_default_creates_its_own_org_and_key(clean_env: Path) -> None:
    from sylphx import RunsClient, UsageClient, create_client

    config = create_client()
    assert UsageClient.org(config).name == "local"
    token_file = clean_env / "local-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    run = RunsClient.run(config, command=["true"])
    assert run.wait(timeout=30).status == "succeeded"
    config.close()
