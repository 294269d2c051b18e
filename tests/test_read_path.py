"""The hot read path: the API key cache and its revocation bound."""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import Server
from sylphx._server import orgs
from sylphx._server.readcache import KeyCache


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_key_cache_entries_expire_ttl_after_their_lookup() -> None:
    clock = FakeClock()
    cache = KeyCache(2.0, clock=clock)
    assert cache.get("h") is None
    checked_at = cache.now()
    clock.t += 0.5  # the store lookup took a while: the bound counts from its start
    cache.put("h", "org_a", checked_at)
    assert cache.get("h") == "org_a"
    clock.t = checked_at + 1.999
    assert cache.get("h") == "org_a"
    clock.t = checked_at + 2.0
    assert cache.get("h") is None  # a revoked key is refused from here on


def test_key_cache_off_and_bounded() -> None:
    off = KeyCache(0.0)
    off.put("h", "org_a", off.now())
    assert off.get("h") is None
    small = KeyCache(60.0, max_entries=2)
    for n in range(5):
        small.put(f"h{n}", "org_a", small.now())
    assert len(small._entries) <= 2 and small.get("h4") == "org_a"


def _revoke(server: Server, key_id: str) -> float:
    """Revoke the key in the store; the monotonic time once that is committed."""
    with server.plane.sessions.begin() as s:
        orgs.revoke_key(s, key_id, server.plane.now())
    return time.monotonic()


def test_revoked_key_is_refused_within_the_cache_bound(make_server: Callable[..., Server]) -> None:
    ttl = 3.0
    server = make_server(auth_cache_seconds=ttl)
    with server.plane.sessions.begin() as s:
        row, token = orgs.create_key(s, "org_test", name="short", now=server.plane.now())
    client = server.client(token)
    assert client.get("/v1/runs").status_code == 200  # the lookup is cached from here
    revoked = _revoke(server, row.id)
    early = client.get("/v1/runs")
    if time.monotonic() - revoked < ttl:  # (a stalled machine may already be past it)
        assert early.status_code == 200  # served from the cache, as documented
    time.sleep(max(0.0, revoked + ttl - time.monotonic()))
    late = client.get("/v1/runs")
    assert late.status_code == 401 and "revoked" in late.json()["message"]
    assert server.client("sx_unknown").get("/v1/runs").status_code == 401


def test_without_the_cache_a_revoked_key_is_refused_at_once(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(auth_cache_seconds=0)
    with server.plane.sessions.begin() as s:
        row, token = orgs.create_key(s, "org_test", name="short", now=server.plane.now())
    client = server.client(token)
    assert client.get("/v1/runs").status_code == 200
    _revoke(server, row.id)
    assert client.get("/v1/runs").status_code == 401
