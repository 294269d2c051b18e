"""Bad input, sent as a tenant would: a 422 naming the field, nothing stored, and a stored
run can always be read, listed, cancelled and deleted (issue #17, items 1 and 3)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conftest import Server
from sylphx._core import limits
from sylphx._server.store import RunRow, UsageRow

SH = ["sh", "-c"]


@pytest.fixture
def server(tenant: Server) -> Server:
    """Each test acts as an org of its own on the module's one control plane: what it sends
    is refused, or its runs end before it does."""
    return tenant


def _runs_stored(server: Server) -> int:
    """The runs stored for the org ``server`` acts as."""
    count = select(func.count()).select_from(RunRow).where(RunRow.org_id == server.org_id)
    with server.plane.reads() as s:
        return int(s.scalar(count) or 0)


def _post_raw(server: Server, body: bytes | str) -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return server.http.post("/v1/runs", content=data, headers={"Content-Type": "application/json"})


def _field(r: httpx.Response) -> str:
    body = r.json()
    assert body["error"] == "validation_error", body
    assert body["details"][0]["fix"], body
    return str(body["details"][0]["field"])


# (raw JSON body, the field the 422 names)
BAD_BODIES: list[tuple[str, str]] = [
    ('{"command": ["echo", "\\ud800"]}', "command[1]"),
    ('{"command": ["echo", "a\\u0000b"]}', "command[1]"),
    ('{"command": ["echo"], "env": {"K": "\\udfff"}}', "env.K"),
    ('{"command": ["echo"], "image": "busybox\\u0000"}', "image"),
    ('{"command": ["echo"], "workingDir": "/tmp/\\u0000x"}', "workingDir"),
    ('{"command": ["echo"], "parallelism": true}', "parallelism"),
    ('{"command": ["echo"], "parallelism": "3"}', "parallelism"),
    ('{"command": ["echo"], "parallelism": 3.5}', "parallelism"),
    ('{"command": ["echo"], "parallelism": 99999999999999999999999}', "parallelism"),
    ('{"command": ["echo"], "gangScheduling": "yes"}', "gangScheduling"),
    ('{"command": ["echo"], "network": "off"}', "network"),
    ('{"command": ["echo"], "timeoutSeconds": "60"}', "timeoutSeconds"),
    ('{"command": ["echo"], "volumeMounts": [{"volumeId": "v", "mountPath": "//etc"}]}',
     "volumeMounts[0].mountPath"),
    ('{"command": ["echo"], "volumeMounts": [{"volumeId": "v", "mountPath": "/a/\\u0000"}]}',
     "volumeMounts[0].mountPath"),
    ('{"command": ["echo"], "workingDir": "/definitely/not/here"}', "workingDir"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_values_are_a_422_naming_the_field_and_nothing_is_stored(
    server: Server, body: str, field: str
) -> None:
    r = _post_raw(server, body)
    assert r.status_code == 422, r.text
    assert _field(r) == field
    assert _runs_stored(server) == 0
    assert server.http.get("/v1/runs").status_code == 200  # the org's list still answers


def test_sizes_past_the_limits_are_refused(server: Server) -> None:
    big = "x" * (limits.MAX_ARG_BYTES + 1)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"command": ["true"] * (limits.MAX_ARGS + 1)}, "command"),
        ({"command": ["echo", big]}, "command[1]"),
        ({"command": ["echo"] + ["y" * 60_000] * 5}, "command"),
        ({"command": ["true"], "env": {"BIG": big}}, "env.BIG"),
        ({"command": ["true"], "env": {f"V{i}": "" for i in range(1025)}}, "env"),
        ({"command": ["true"], "workingDir": "/" + "d/" * 2100}, "workingDir"),
        ({"command": ["true"], "workingDir": "/" + "d" * 256}, "workingDir"),
        ({"command": ["true"], "secrets": [f"S{i}" for i in range(17)]}, "secrets"),
    ]
    for spec, field in cases:
        r = server.http.post("/v1/runs", json=spec)
        assert r.status_code == 422, (field, r.text[:300])
        assert _field(r) == field
    assert _runs_stored(server) == 0


def test_a_spec_at_every_limit_launches(server: Server, tmp_path: Path) -> None:
    """What is accepted can be launched: the largest command, env and secrets the limits
    allow reach the shard whole, in the sandbox."""
    for i in range(limits.MAX_SECRETS):
        value = chr(ord("a") + i) * limits.MAX_SECRET_BYTES
        r = server.http.post("/v1/secrets", json={"name": f"S{i}", "value": value})
        assert r.status_code == 201, r.text
    script = (
        "import os, sys; e = os.environ;"
        " print(len(sys.argv), sum(len(a) for a in sys.argv[1:]),"
        " sum(len(e[k]) for k in e if k.startswith('V')),"
        " sum(len(e[k]) for k in e if k[:1] == 'S' and k[1:].isdigit()))"
    )
    command = [sys.executable, "-c", script]
    fixed = sum(len(a) + 1 for a in command)
    arg = "z" * ((limits.MAX_COMMAND_BYTES - fixed) // (limits.MAX_ARGS - 3) - 1)
    command += [arg] * (limits.MAX_ARGS - len(command))
    value = "v" * (limits.MAX_ENV_BYTES // limits.MAX_ENV_VARS - 8)
    env = {f"V{i:04}": value for i in range(limits.MAX_ENV_VARS)}
    spec = {"command": command, "env": env, "secrets": [f"S{i}" for i in range(16)]}
    assert len(json.dumps(spec)) < limits.MAX_BODY_BYTES
    run = server.submit(**spec, workingDir=str(_open_dir(tmp_path)))
    done = server.wait(run["id"])
    out = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).text
    assert done["status"] == "succeeded", (done, out[-500:])
    argc, argbytes, envbytes, secretbytes = map(int, out.split()[:4])
    assert argc == limits.MAX_ARGS - 2  # python drops its own "-c" and the script
    assert argbytes == len(arg) * (limits.MAX_ARGS - 3)
    assert envbytes == len(value) * limits.MAX_ENV_VARS
    assert secretbytes == limits.MAX_SECRET_BYTES * limits.MAX_SECRETS


def _open_dir(tmp_path: Path) -> Path:
    """A working directory the shards' unprivileged user can enter."""
    for folder in (tmp_path, *tmp_path.parents):
        if folder == Path("/"):
            break
        os.chmod(folder, os.stat(folder).st_mode | 0o755)
    return tmp_path


def test_bad_query_strings_and_ids_are_422s_or_404s(server: Server) -> None:
    run = server.submit(command=["true"], parallelism=2, gangScheduling=False)
    server.wait(run["id"])
    logs = f"/v1/runs/{run['id']}/logs"
    huge = "99999999999999999999999"
    for path, params, status, field in [
        (logs, {"shard": huge}, 422, "shard"),
        (logs, {"shard": "2"}, 422, "shard"),  # parallelism is 2
        (logs, {"shard": "0", "attempt": huge}, 422, "attempt"),
        (logs, {"shard": "0", "attempt": "2"}, 422, "attempt"),  # it had one attempt
        ("/v1/runs", {"cursor": "garbage"}, 422, "cursor"),
        ("/v1/runs", {"limit": huge}, 422, "limit"),
        ("/v1/runs", {"status": "nope"}, 422, "status"),
    ]:
        r = server.http.get(path, params=params)
        assert r.status_code == status, (path, params, r.text)
        assert _field(r) == field
    assert server.http.get("/v1/runs/wrk_%00x").status_code == 422
    assert server.http.get("/v1/runs/" + "w" * 65).status_code == 422
    assert server.http.get("/v1/runs/wrk_0000000000000000").status_code == 404
    unknown = server.http.get("/v1/nowhere")
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    wrong = server.http.put("/v1/runs")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_a_body_is_not_read_before_the_key_is_known(server: Server) -> None:
    """Without a valid key an API write is a 401 before any of its body is read: parsing
    4 MiB of JSON held the event loop ~0.2 s, for anyone who could reach the port. The
    request below announces 3 MB and sends none of them: the answer comes anyway."""
    host, port = server.url.removeprefix("http://").split(":")
    for key in ("", "Authorization: Bearer sx_not-a-key\r\n"):
        head = (
            f"POST /v1/runs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 3000000\r\n{key}\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head.encode())
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b'"error":"unauthorized"' in answer, answer[:400]
        assert b"www-authenticate: bearer" in answer.lower()


def test_a_write_when_the_store_is_away_is_a_503_before_its_body(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key check before the body meets a store that is away as the route would: a
    503 naming the store, not a read and parse of the body anyway."""
    from sqlalchemy.exc import OperationalError

    async def away(_self: object, _key_hash: str) -> str:
        raise OperationalError("SELECT 1", {}, Exception("unable to open database file"))

    monkeypatch.setattr(type(server.plane.account), "org_of_hash", away)  # (the key's look-up)
    r = _post_raw(server, b"{not even json")
    assert r.status_code == 503 and r.json()["error"] == "store_unavailable", r.text


def test_bodies_too_large_or_too_deep_get_the_error_shape(server: Server) -> None:
    deep = '{"command": ["true"], "env": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = _post_raw(server, deep)
    assert r.status_code == 422 and _field(r) == "body", r.text[:300]
    big = b'{"command": ["' + b"x" * (limits.MAX_BODY_BYTES + 1) + b'"]}'
    r = _post_raw(server, big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks() -> Any:
        yield b'{"command": ["'
        for _ in range(5):
            yield b"x" * (1 << 20)
        yield b'"]}'

    r = server.http.post("/v1/runs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    for body in (b'{"name": "\\ud800"}', b'{"name": "v", "size": 1}'):
        r = server.http.post(
            "/v1/volumes", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422, r.text
    r = _post_raw(server, b"{not json")
    assert r.status_code == 422 and _field(r) == "body", r.text
    for key, words in (("", "must not be empty"), ("k" * 256, "at most 255 characters")):
        r = server.http.post(
            "/v1/runs", json={"command": ["true"]}, headers={"Idempotency-Key": key}
        )
        assert r.status_code == 422 and words in r.text, r.text
    r = server.http.post("/v1/secrets", json={"name": "A", "value": "x\x00"})
    assert r.status_code == 422 and _field(r) == "value"
    assert _runs_stored(server) == 0


def test_an_ended_run_can_be_deleted_with_its_logs_and_its_usage_stays(server: Server) -> None:
    live = server.submit(command=[*SH, "sleep 30"])
    r = server.http.delete(f"/v1/runs/{live['id']}")
    assert r.status_code == 409 and "cancel it first" in r.json()["message"]
    server.http.post(f"/v1/runs/{live['id']}/cancel")
    server.wait(live["id"])
    run = server.submit(command=[*SH, "echo hello; sleep 0.2"], parallelism=2, machine="nano")
    server.wait(run["id"])
    server.get(run["id"])  # a final view, now cached in memory
    logs_dir = server.settings.logs_dir / run["id"]
    assert logs_dir.is_dir()
    assert (server.plane.executor.state_dir / run["id"]).is_dir()  # type: ignore[attr-defined]
    with server.plane.reads() as s:
        billed = s.scalar(select(func.sum(UsageRow.compute_seconds)).where(
            UsageRow.run_id == run["id"]))  # fmt: skip
    assert billed and billed > 0
    before = server.http.get("/v1/usage").json()["computeSeconds"]
    assert server.http.delete(f"/v1/runs/{run['id']}").status_code == 204
    for path in (f"/v1/runs/{run['id']}", f"/v1/runs/{run['id']}/shards"):
        assert server.http.get(path).status_code == 404
    assert server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).status_code == 404
    assert not logs_dir.exists()
    assert not (server.plane.executor.state_dir / run["id"]).exists()  # type: ignore[attr-defined]
    assert run["id"] not in [r["id"] for r in server.http.get("/v1/runs").json()["items"]]
    assert server.http.get("/v1/usage").json()["computeSeconds"] == before  # usage stays
    assert server.http.delete(f"/v1/runs/{run['id']}").status_code == 404
    other = server.client(server.new_org("other"))
    assert other.delete(f"/v1/runs/{live['id']}").status_code == 404  # not theirs
    assert server.http.delete(f"/v1/runs/{live['id']}").status_code == 204


def test_a_run_stored_under_older_rules_stays_readable_and_deletable(server: Server) -> None:
    """Runs stored before today's rules (a lone surrogate, 10,001 arguments, a mount at
    //etc) are still read, listed, cancelled and deleted: none of them is a 500."""
    from sylphx._core.spec import RunSpec
    from sylphx._server.runs import service as runs

    odd = RunSpec.parse({"command": ["true"]}).to_wire() | {
        "command": ["echo", "\ud800"] + ["x"] * 10_001,
        "volumeMounts": [{"volumeId": "vol_gone", "mountPath": "//etc"}],
    }
    with server.plane.sessions.begin() as s:
        org = s.get(runs.OrgRow, server.org_id)
        assert org is not None
        spec = RunSpec.parse({"command": ["true"]})
        capacity, now = server.plane.executor.capacity(), server.plane.now()
        values = runs.new_run(s, spec, org, capacity=capacity, now=now)
        runs.insert_runs(s.connection(), [(values | {"spec": odd}, spec)])
        run_id = values["id"]
    listed = server.http.get("/v1/runs")
    assert listed.status_code == 200 and listed.json()["items"][0]["id"] == run_id
    got = server.http.get(f"/v1/runs/{run_id}").json()
    assert got["spec"]["command"][1] == "\ufffd"
    assert server.http.post(f"/v1/runs/{run_id}/cancel").status_code == 202
    server.wait(run_id)
    assert server.http.delete(f"/v1/runs/{run_id}").status_code == 204


def test_the_readme_shows_the_limits_the_code_enforces() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for field, limit, why in limits.LIMITS:
        assert f"| {field} | {limit} | {why} |" in readme, field
