"""The plain submit's route (``http/fast_submit.py``) answers as FastAPI's ``POST /v1/runs``
would: it serves only the plain case and hands everything else to that route, so every
refusal is FastAPI's own. Each request below is sent to two apps around the same running
control plane -- as served, and without the plain route -- and the answers compared."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import Server
from sylphx._core.limits import MAX_BODY_BYTES
from sylphx._server.http import create_app
from sylphx._server.http.fast_submit import PlainSubmit
from sylphx._server.http.metrics import REQUESTS
from sylphx._server.tenancy import orgs

SPEC = {"command": ["true"], "machine": "nano"}
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Spy:
    """Counts the requests a plain route hands to FastAPI's."""

    def __init__(self, full: Any) -> None:
        self.full, self.handed = full, 0

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        self.handed += 1
        await self.full.handle(scope, receive, send)


@pytest.fixture
def apps(tenant: Server) -> Iterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Spy]]:
    """(served app, app without the plain route, the spy on the served one's hand-offs)."""
    served, full = create_app(tenant.plane), create_app(tenant.plane)
    plain = served.router.routes[0].app  # type: ignore[attr-defined]
    assert isinstance(plain, PlainSubmit)
    spy = Spy(plain.full)
    plain.full = spy  # type: ignore[assignment]
    del full.router.routes[0]
    auth = {"Authorization": f"Bearer {tenant.token}"}
    yield _client(served, auth), _client(full, auth), spy


def _client(app: FastAPI, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sylphx", headers=headers
    )


JSON = {"Content-Type": "application/json"}
REFUSED: dict[str, dict[str, Any]] = {
    "not JSON": {"content": b'{"command": ["true"', "headers": JSON},
    "empty body": {"content": b"", "headers": JSON},
    "nested too deep": {"content": b'{"env": ' + b"[" * 100_000, "headers": JSON},
    "a lone surrogate": {"content": b'{"command": ["\\ud800"]}', "headers": JSON},
    "not JSON, and no key": {"content": b'{"command": [', "headers": {**JSON, "Authorization": ""}},
    "a number too long": {"content": b'{"parallelism": ' + b"9" * 5000 + b"}", "headers": JSON},
    "not an object": {"json": []},
    "a bad spec": {"json": {**SPEC, "parallelism": 0}},
    "an unknown field": {"json": {**SPEC, "colour": "blue"}},
    "no command": {"json": {"machine": "nano"}},
    "a wrong type": {"json": {**SPEC, "parallelism": "4"}},
    "an empty key": {"json": SPEC, "headers": {"Idempotency-Key": ""}},
    "a key too long": {"json": SPEC, "headers": {"Idempotency-Key": "k" * 256}},
    "no key at all": {"json": SPEC, "headers": {"Authorization": ""}},
    "an unknown key": {"json": SPEC, "headers": {"Authorization": "Bearer sx_nope"}},
    "no key and a bad spec": {"json": {"parallelism": 0}, "headers": {"Authorization": ""}},
    "another content type": {
        "content": json.dumps(SPEC).encode(),
        "headers": {"Content-Type": "text/plain"},
    },
    "a body over the limit": {"json": {**SPEC, "env": {"X": "x" * MAX_BODY_BYTES}}},
    "a quote": {"json": SPEC, "params": {"dryRun": "true"}},
    "a bad query": {"json": SPEC, "params": {"dryRun": "perhaps"}},
}


AT_THE_EDGE = {
    "not JSON, and no key",
    "no key at all",
    "an unknown key",
    "no key and a bad spec",
    "a body over the limit",
}


@pytest.mark.parametrize("case", REFUSED)
async def test_what_the_plain_route_does_not_store_is_answered_as_fastapi_does(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, Spy], case: str
) -> None:
    served, full, spy = apps
    got, want = [await c.post("/v1/runs", **REFUSED[case]) for c in (served, full)]
    assert got.status_code == want.status_code != 201, got.text
    assert got.json() == want.json()
    assert {k: v for k, v in got.headers.items() if k != "x-request-id"} == {
        k: v for k, v in want.headers.items() if k != "x-request-id"
    }
    # a missing or unknown key, and a body over the limit, are refused at the edge, before
    # either route; every other refusal here is FastAPI's to answer, handed over once
    assert spy.handed == (case not in AT_THE_EDGE)


async def test_a_plain_submit_is_stored_by_the_plain_route_as_by_fastapis(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, Spy],
) -> None:
    served, full, spy = apps
    key = {"Idempotency-Key": "nightly-2026-12-05"}
    first = await served.post("/v1/runs", json=SPEC, headers=key)
    assert first.status_code == 201 and spy.handed == 0
    again = await full.post("/v1/runs", json=SPEC, headers=key)  # the same key: the same run
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    other = await served.post(
        "/v1/runs", content=json.dumps(SPEC), headers={"Content-Type": "application/json"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    stored = await full.get(f"/v1/runs/{other.json()['id']}")
    assert stored.json()["spec"] == other.json()["spec"]
    assert {k: v for k, v in first.headers.items() if k != "content-length"} == {
        k: v for k, v in again.headers.items() if k != "content-length"
    }
    assert spy.handed == 0


async def test_a_plain_submit_is_timed_under_its_routes_template(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, Spy],
) -> None:
    served = apps[0]

    def count(status: str) -> float:
        return REQUESTS.labels("POST", "/v1/runs", status)._sum.get()  # type: ignore[attr-defined, no-any-return]

    before = count("201"), count("422")
    assert (await served.post("/v1/runs", json=SPEC)).status_code == 201
    assert (await served.post("/v1/runs", content=b"{", headers=JSON)).status_code == 422
    assert count("201") > before[0] and count("422") > before[1]


async def test_a_client_gone_mid_body_is_answered_as_fastapi_does(tenant: Server) -> None:
    """Nobody reads that answer, but it must not be a 500 (an error in the log, an alert)."""
    served_app, full_app = create_app(tenant.plane), create_app(tenant.plane)
    del full_app.router.routes[0]
    answers = []
    for app in (served_app, full_app):
        sent: list[dict[str, Any]] = []
        parts = iter(
            [
                {"type": "http.request", "body": b'{"comm', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )

        async def receive(parts: Iterator[dict[str, Any]] = parts) -> dict[str, Any]:
            return next(parts)

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
        headers.append((b"authorization", f"Bearer {tenant.token}".encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/runs", "raw_path": b"/v1/runs", "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
            "server": ("sylphx", 80),
        }  # fmt: skip
        await app(scope, receive, send)
        answers.append((sent[0]["status"], sent[1]["body"]))
    assert answers[0] == answers[1] and answers[0][0] == 422


async def test_a_writes_key_is_hashed_once_on_either_route(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, Spy],
    tenant: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge hashes and checks an API write's key before its body is read; the route
    asks the key cache again by that hash, and never hashes the key a second time."""
    service = type(tenant.plane.account)  # (a frozen dataclass: patched on its class)
    real, hashed = service.key_hash, []

    def key_hash(authorization: str | None) -> str:
        hashed.append(authorization)
        return real(authorization)

    monkeypatch.setattr(service, "key_hash", staticmethod(key_hash))
    for client in apps[:2]:  # the plain route, and FastAPI's (a dry run goes there)
        for params in ({}, {"dryRun": "true"}):
            hashed.clear()
            answer = await client.post("/v1/runs", json=SPEC, params=params)
            assert answer.status_code in (200, 201), answer.text
            assert hashed == [f"Bearer {tenant.token}"]
    assert apps[2].handed == 1  # (the dry run)
    hashed.clear()  # a read is checked by its route: the edge checks writes only
    assert (await apps[0].get("/v1/runs")).status_code == 200
    assert hashed == [f"Bearer {tenant.token}"]


@pytest.mark.parametrize("params", [{}, {"dryRun": "true"}])  # either route
def test_a_key_revoked_while_its_body_is_read_is_refused(
    make_server: Callable[..., Server], params: dict[str, str]
) -> None:
    """A leaked key's holder opens a write, its headers checked at the edge, and trickles
    the body; the key is revoked meanwhile: the write is refused when its body is in, as
    the key cache promises (``SYLPHX_AUTH_CACHE_SECONDS=0``: at once). Found by an attack
    review of the edge's single check."""
    server = make_server(auth_cache_seconds=0)
    with server.plane.sessions.begin() as s:
        row, token = orgs.create_key(s, "org_test", name="leaked", now=server.plane.now())
    body = json.dumps(SPEC).encode()
    checked = threading.Event()

    def trickled() -> Iterator[bytes]:
        yield body[:5]
        checked.wait(10)
        with server.plane.sessions.begin() as s:
            orgs.revoke_key(s, row.id, server.plane.now())
        yield body[5:]

    with server.client(token) as client:
        threading.Timer(0.5, checked.set).start()  # the headers are in, and checked
        answer = client.post("/v1/runs", content=trickled(), params=params, headers=JSON)
        assert answer.status_code == 401, answer.text
        assert client.get("/v1/runs").status_code == 401
    assert server.http.get("/v1/runs").json()["items"] == []
