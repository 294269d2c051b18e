"""The hot read path: the API key cache and its revocation bound, and ``GET /v1/runs/{id}``
(read without loading shards, final views kept in memory) against the full view."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from conftest import Server
from sylphx._server.runs import service as runs
from sylphx._server.runs.readcache import KeyCache, SharedReads, TerminalViews
from sylphx._server.store import AttemptRow
from sylphx._server.tenancy import billing, orgs


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


def test_terminal_views_belong_to_their_org_and_are_bounded() -> None:
    views = TerminalViews(max_entries=2)
    views.put("wrk_1", "org_a", b"1")
    assert views.get("wrk_1", "org_a") == b"1"
    assert views.get("wrk_1", "org_b") is None
    views.put("wrk_2", "org_a", b"2")
    views.get("wrk_1", "org_a")  # most recently used
    views.put("wrk_3", "org_a", b"3")
    assert views.get("wrk_2", "org_a") is None
    assert views.get("wrk_1", "org_a") == b"1" and views.get("wrk_3", "org_a") == b"3"


class BlockingReads:
    """A read function whose calls block until released; each returns its call number."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.fail: Exception | None = None

    def __call__(self) -> bytes:
        self.calls += 1
        n = self.calls
        self.started.release()
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        return str(n).encode()

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 10)


def test_shared_reads_answer_waiting_requests_with_one_read_started_after_them() -> None:
    async def scenario() -> None:
        reads, fn = SharedReads(slots=1), BlockingReads()
        first = asyncio.ensure_future(reads.read("k", fn))
        await fn.wait_started()  # read 1 holds the only slot
        late = [asyncio.ensure_future(reads.read("k", fn)) for _ in range(3)]
        other = asyncio.ensure_future(reads.read("other", fn))
        await asyncio.sleep(0.05)
        assert fn.calls == 1  # both waiting for the slot; "k" has one read queued, not three
        fn.release.set()
        assert await first == b"1"
        shared = {await task for task in late}
        assert len(shared) == 1 and shared | {await other} == {b"2", b"3"}
        assert fn.calls == 3
        assert await reads.read("k", fn) == b"4"  # nothing queued: a new read

    asyncio.run(scenario())


def test_shared_reads_pass_errors_to_every_waiter_and_survive_a_waiter_leaving() -> None:
    async def scenario() -> None:
        reads, fn = SharedReads(slots=1), BlockingReads()
        first = asyncio.ensure_future(reads.read("k", fn))
        await fn.wait_started()
        waiters = [asyncio.ensure_future(reads.read("k", fn)) for _ in range(3)]
        await asyncio.sleep(0.01)
        waiters[0].cancel()  # a client went away: the others still get their answer
        fn.fail = RuntimeError("store down")
        fn.release.set()
        for task in [first, *waiters[1:]]:
            try:
                await task
                raise AssertionError("expected the read's error")
            except RuntimeError as exc:
                assert str(exc) == "store down"
        assert waiters[0].cancelled() and fn.calls == 2
        fn.fail = None
        assert await reads.read("k", fn) == b"3"

    asyncio.run(scenario())


def _revoke(server: Server, key_id: str) -> None:
    with server.plane.sessions.begin() as s:
        orgs.revoke_key(s, key_id, server.plane.now())


def test_revoked_key_is_refused_within_the_cache_bound(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 3.0
    server = make_server(auth_cache_seconds=ttl)
    clock = FakeClock()  # the API's key cache on our clock: the bound, to the millisecond
    monkeypatch.setattr(server.plane.keys, "_clock", clock)
    with server.plane.sessions.begin() as s:
        row, token = orgs.create_key(s, "org_test", name="short", now=server.plane.now())
    client = server.client(token)
    assert client.get("/v1/runs").status_code == 200  # the lookup is cached from here
    _revoke(server, row.id)
    clock.t += ttl - 0.001
    assert client.get("/v1/runs").status_code == 200  # served from the cache, as documented
    clock.t += 0.001
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


def _full_view(server: Server, run_id: str) -> dict[str, Any]:
    """The view as the shard-loading path renders it (what GET returned before)."""
    with server.plane.reads() as s:
        run = runs.load(s, run_id, "org_test")
        return runs.full_view(s, run, server.plane.now()).to_wire()


def test_get_run_matches_the_full_view(server: Server) -> None:
    done = server.submit(
        command=["sh", "-c", "exit $((SYLPHX_SHARD_INDEX % 2))"], parallelism=4, machine="nano"
    )
    assert server.wait(done["id"])["status"] == "partial"
    for _ in range(2):  # read from the store, then from memory
        r = server.http.get(f"/v1/runs/{done['id']}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json() == _full_view(server, done["id"])
    assert done["id"] in server.plane.terminal_views._entries
    rival = server.client(server.new_org("rival"))
    assert rival.get(f"/v1/runs/{done['id']}").status_code == 404  # cached, still not theirs

    live = server.submit(command=["sleep", "30"], parallelism=2, machine="nano")
    server.wait_for(lambda: server.get(live["id"])["aggregate"]["running"] == 2)
    got, want = server.get(live["id"]), _full_view(server, live["id"])
    got.pop("computeSeconds"), want.pop("computeSeconds")  # metered up to each read's now
    assert got == want
    assert live["id"] not in server.plane.terminal_views._entries
    server.http.post(f"/v1/runs/{live['id']}/cancel")
    assert server.wait(live["id"])["status"] == "cancelled"
    assert server.get(live["id"]) == _full_view(server, live["id"])


def test_read_says_final_only_for_terminal_runs_with_no_open_attempt(server: Server) -> None:
    live = server.submit(command=["sleep", "30"], parallelism=3, machine="nano")
    server.wait_for(lambda: server.get(live["id"])["aggregate"]["running"] == 3)
    now = server.plane.now()
    with server.plane.reads() as s:
        view, final = runs.read(s, live["id"], "org_test", now)
        starts = s.scalars(select(AttemptRow.started_at).where(AttemptRow.run_id == live["id"]))
        windows = [billing.meter("nano", started, now)[1] for started in starts if started]
    assert view.status == "running" and not final
    assert len(windows) == 3 and view.compute_seconds == round(sum(windows), 3)
    server.http.post(f"/v1/runs/{live['id']}/cancel")
    server.wait(live["id"])
    with server.plane.reads() as s:
        view, final = runs.read(s, live["id"], "org_test", server.plane.now())
    assert view.status == "cancelled" and final
