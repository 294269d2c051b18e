"""Long-polls: ``GET /v1/runs/{id}?wait=SECONDS`` on a real control plane, store, reconciler
and local executor (in-process uvicorn, or ``sylphx server --workers 2``).

Nothing here asserts a speed: "promptly" means well before the ``wait`` asked for, which
is what a long-poll that was never notified would take.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TERMINAL, Server
from serverproc import ServerProcess

LONG_WAIT = 40  # what a request that is never released would take


def _no_fallback(server: Server) -> None:
    """Only notifications can release this server's long-polls before their ``wait``."""
    server.plane.run_waiters.recheck = server.plane.run_waiters.safety = 3600


def _long_poll(http: httpx.Client, run_id: str, wait: float) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    r = http.get(f"/v1/runs/{run_id}", params={"wait": wait}, timeout=wait + 30)
    assert r.status_code == 200, r.text
    return dict(r.json()), time.monotonic() - start


def test_returns_once_the_run_ends_released_by_the_reconciler(server: Server) -> None:
    _no_fallback(server)
    run = server.submit(command=["sh", "-c", "sleep 0.5; echo done"], machine="nano")
    body, took = _long_poll(server.http, run["id"], LONG_WAIT)
    assert body["status"] == "succeeded" and body["aggregate"]["succeeded"] == 1
    assert took < LONG_WAIT / 2  # released by the reconciler's pass, not by the clock
    assert body == server.get(run["id"])  # the same view as the plain GET
    assert len(server.plane.run_waiters) == 0


def test_a_terminal_run_answers_at_once_and_so_does_an_ended_failing_run(server: Server) -> None:
    run = server.submit(command=["sh", "-c", "exit 3"], machine="nano")
    body, took = _long_poll(server.http, run["id"], LONG_WAIT)
    assert body["status"] == "failed"
    assert took < LONG_WAIT / 2
    body, took = _long_poll(server.http, run["id"], 60)  # terminal before it asked
    assert body["status"] == "failed" and took < 30


def test_after_wait_a_long_run_answers_with_its_current_view(server: Server) -> None:
    run = server.submit(command=["sleep", "60"], machine="nano")
    server.wait_for(lambda: server.get(run["id"])["status"] == "running")
    body, took = _long_poll(server.http, run["id"], 1)
    assert body["status"] == "running" and body["aggregate"]["running"] == 1
    assert took >= 0.9  # it did wait (not an error, not an early answer)
    assert len(server.plane.run_waiters) == 0
    server.http.post(f"/v1/runs/{run['id']}/cancel")
    assert server.wait(run["id"])["status"] == "cancelled"


def test_many_waiters_on_one_run_and_a_running_cancel(server: Server) -> None:
    _no_fallback(server)
    run = server.submit(command=["sleep", "60"], parallelism=2, machine="nano")
    server.wait_for(lambda: server.get(run["id"])["aggregate"]["running"] == 2)
    with ThreadPoolExecutor(8) as pool:
        polls = [pool.submit(_long_poll, server.http, run["id"], LONG_WAIT) for _ in range(8)]
        server.wait_for(lambda: len(server.plane.run_waiters) == 8)
        server.http.post(f"/v1/runs/{run['id']}/cancel")
        results = [p.result() for p in polls]
    for body, took in results:
        assert body["status"] == "cancelled" and took < LONG_WAIT / 2
    assert len(server.plane.run_waiters) == 0


def test_cancelling_a_queued_run_releases_its_waiters(make_server: Any) -> None:
    server = make_server(local_cpus=1.0)
    _no_fallback(server)
    blocker = server.submit(command=["sleep", "60"], machine="standard")  # the whole host
    server.wait_for(lambda: server.get(blocker["id"])["status"] == "running")
    queued = server.submit(command=["true"], machine="standard")
    assert server.get(queued["id"])["status"] == "queued"
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(_long_poll, server.http, queued["id"], LONG_WAIT)
        server.wait_for(lambda: len(server.plane.run_waiters) == 1)
        # settled by the API itself (no reconciler pass ends it): the cancel releases it
        assert server.http.post(f"/v1/runs/{queued['id']}/cancel").json()["status"] == "cancelled"
        body, took = poll.result()
    assert body["status"] == "cancelled" and took < LONG_WAIT / 2
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")


def test_without_notifications_the_store_check_releases_waiters(server: Server) -> None:
    """What a worker that does not hold the reconciler lease does: no pass of its own tells
    it anything, so it re-reads the states of the runs waited on."""
    server.plane.reconciler.on_pass = lambda ended: None  # as if another process reconciled
    server.wait_for(lambda: not server.plane.run_waiters.reconciling, timeout=10)
    run = server.submit(command=["sh", "-c", "sleep 0.5"], machine="nano")
    body, took = _long_poll(server.http, run["id"], LONG_WAIT)
    assert body["status"] == "succeeded" and took < LONG_WAIT / 2
    assert not server.plane.run_waiters.reconciling


@pytest.mark.parametrize("wait", ["0", "-1", "60.5", "61", "abc", "nan", "inf", ""])
def test_bad_wait_is_a_422_naming_the_field_and_the_fix(server: Server, wait: str) -> None:
    run = server.submit(command=["true"], machine="nano")
    r = server.http.get(f"/v1/runs/{run['id']}", params={"wait": wait})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_error"
    assert body["message"].startswith("wait: must be a number of seconds, 0 < wait <= 60")
    assert "Fix: " in body["message"]
    (detail,) = body["details"]
    assert detail["field"] == "wait" and "repeat the request" in detail["fix"]


def test_another_orgs_run_is_a_404_at_once_and_waits_are_scoped(server: Server) -> None:
    run = server.submit(command=["sleep", "60"], machine="nano")
    other = server.client(server.new_org("other"))
    start = time.monotonic()
    r = other.get(f"/v1/runs/{run['id']}", params={"wait": LONG_WAIT})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = other.get("/v1/runs/wrk_missing", params={"wait": LONG_WAIT})
    assert r.status_code == 404
    assert time.monotonic() - start < LONG_WAIT / 2
    assert len(server.plane.run_waiters) == 0
    r = server.http.get("/v1/runs/wrk_missing", params={"wait": 1})
    assert r.status_code == 404
    other.close()
    server.http.post(f"/v1/runs/{run['id']}/cancel")


def test_a_client_that_goes_away_leaves_no_waiter_behind(server: Server) -> None:
    run = server.submit(command=["sleep", "60"], machine="nano")
    impatient = server.client(server.token)
    with pytest.raises(httpx.ReadTimeout):
        impatient.get(f"/v1/runs/{run['id']}", params={"wait": 50}, timeout=1)
    impatient.close()
    server.wait_for(lambda: len(server.plane.run_waiters) == 0, timeout=10)
    server.http.post(f"/v1/runs/{run['id']}/cancel")


def test_beyond_the_cap_a_request_answers_at_once(server: Server) -> None:
    server.plane.run_waiters.max_waiters = 1
    run = server.submit(command=["sleep", "60"], machine="nano")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_long_poll, server.http, run["id"], 5)
        server.wait_for(lambda: len(server.plane.run_waiters) == 1)
        body, took = _long_poll(server.http, run["id"], LONG_WAIT)
        assert body["status"] in ("queued", "running") and took < LONG_WAIT / 2
        assert first.result()[0]["status"] in ("queued", "running")
    server.http.post(f"/v1/runs/{run['id']}/cancel")


def test_shutting_down_answers_the_waiters(server: Server) -> None:
    run = server.submit(command=["sleep", "60"], machine="nano")
    out: list[tuple[dict[str, Any], float]] = []
    poll = threading.Thread(target=lambda: out.append(_long_poll(server.http, run["id"], 50)))
    poll.start()
    server.wait_for(lambda: len(server.plane.run_waiters) == 1)
    server.plane.run_waiters.close()
    poll.join(timeout=30)
    assert out and out[0][0]["status"] in ("queued", "running") and out[0][1] < 25
    _, took = _long_poll(server.http, run["id"], 50)  # closed: later requests do not wait
    assert took < 25
    server.http.post(f"/v1/runs/{run['id']}/cancel")


def test_two_workers_release_waiters_whichever_worker_holds_them(tmp_path: Path) -> None:
    """``--workers 2``: only one process reconciles; long-polls that land on the other are
    released by its check of the store. Fresh connections spread them over both."""
    server = ServerProcess(tmp_path / "home", workers=2)
    try:
        server.start()
        runs = [
            server.submit(command=["sh", "-c", "sleep 1"], machine="nano")["id"] for _ in range(8)
        ]

        def poll(run_id: str) -> tuple[dict[str, Any], float]:
            with httpx.Client(base_url=server.url, headers=dict(server.http.headers)) as http:
                return _long_poll(http, run_id, LONG_WAIT)

        with ThreadPoolExecutor(len(runs)) as pool:
            results = list(pool.map(poll, runs))
        for body, took in results:
            assert body["status"] == "succeeded" and took < LONG_WAIT / 2
        assert {body["status"] for body, _ in results} <= TERMINAL
        r = server.http.get(f"/v1/runs/{runs[0]}", params={"wait": "61"})
        assert r.status_code == 422
    finally:
        server.close()
