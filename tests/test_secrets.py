"""Scoped secrets: only the runs that name them get them; never in logs or API output."""

from __future__ import annotations

from conftest import Server

VALUE = "postgres://admin:hunter2-Zq8@db.internal/prod"


def test_secrets_reach_only_their_run_and_never_logs_or_the_api(server: Server) -> None:
    r = server.http.post("/v1/secrets", json={"name": "DB_URL", "value": VALUE})
    assert r.status_code == 201 and VALUE not in r.text
    assert (
        server.http.post("/v1/secrets", json={"name": "DB_URL", "value": VALUE}).status_code == 200
    )  # replaced
    show = ["sh", "-c", 'echo "url=${DB_URL:-unset}"; echo "$DB_URL" >&2']
    granted = server.submit(command=show, secrets=["DB_URL"])
    other = server.submit(command=show)
    for run in (granted, other):
        server.wait(run["id"])
    base = f"/v1/runs/{granted['id']}/logs"
    assert server.http.get(base, params={"shard": 0}).text == "url=***\n"
    assert server.http.get(base, params={"shard": 0, "stream": "stderr"}).text == "***\n"
    assert server.http.get(f"/v1/runs/{other['id']}/logs", params={"shard": 0}).text == (
        "url=unset\n"
    )
    for path in (
        "/v1/secrets",
        f"/v1/runs/{granted['id']}",
        f"/v1/runs/{granted['id']}/shards",
        "/v1/runs",
    ):
        assert VALUE not in server.http.get(path).text
    assert [s["name"] for s in server.http.get("/v1/secrets").json()] == ["DB_URL"]
    for path in server.settings.home.rglob("*.sqlite*"):
        assert VALUE.encode() not in path.read_bytes()  # encrypted at rest
    for path in server.settings.home.rglob("sylphx.db*"):
        assert VALUE.encode() not in path.read_bytes()


def test_unknown_or_foreign_secrets_are_refused_at_submit(server: Server) -> None:
    server.http.post("/v1/secrets", json={"name": "TOKEN", "value": "t0ps3cret"})
    r = server.http.post("/v1/runs", json={"command": ["true"], "secrets": ["NOPE"]})
    assert r.status_code == 404 and "secret 'NOPE' not found" in r.json()["message"]
    rival = server.client(server.new_org("rival-secrets"))
    r = rival.post("/v1/runs", json={"command": ["true"], "secrets": ["TOKEN"]})
    assert r.status_code == 404
    assert rival.get("/v1/secrets").json() == []
    assert rival.delete("/v1/secrets/TOKEN").status_code == 404
    assert server.http.delete("/v1/secrets/TOKEN").status_code == 204
    bad = server.http.post("/v1/secrets", json={"name": "not a name", "value": "x"})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "name"
