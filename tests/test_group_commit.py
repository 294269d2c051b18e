"""Group commit of submits (runs.submits): concurrent submits share one transaction, each
answered only after it committed; a refusal is its own, a failed batch is redone one by one.

The budget race under batches is test_quotas' 200 concurrent submits; kill -9 during
concurrent submits is test_faults'. Both run on the session's store (SQLite or PostgreSQL).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from conftest import Server
from sylphx._core.errors import QuotaExceeded
from sylphx._core.spec import RunSpec
from sylphx._server.runs import storing, submits
from sylphx._server.runs.submits import GroupCommit, Submit
from sylphx._server.store import RunRow

SPEC = RunSpec(command=["true"], machine="nano")


def test_queued_submits_are_stored_together_and_all_answered() -> None:
    commit = GroupCommit()
    first_in = threading.Event()
    release = threading.Event()
    batches: list[list[str]] = []

    def batch(asks: list[Submit]) -> None:
        batches.append([ask.org_id for ask in asks])
        if len(batches) == 1:  # the first batch holds on until the others queued
            first_in.set()
            release.wait(10)
        for ask in asks:
            if ask.org_id == "refused":
                ask.error = QuotaExceeded("no room")
            else:
                ask.body = ask.org_id.encode()

    def alone(ask: Submit) -> bytes:
        raise AssertionError("no batch failed")

    def submit(org: str) -> bytes | BaseException:
        try:
            return commit.submit(Submit(SPEC, org, None), batch, alone)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=9) as pool:
        head = pool.submit(submit, "first")
        assert first_in.wait(10)
        rest = [pool.submit(submit, org) for org in [f"org{i}" for i in range(7)] + ["refused"]]
        while len(commit._queue) < 8:  # all eight queued behind the first batch
            threading.Event().wait(0.01)
        release.set()
        answers = [f.result(10) for f in rest]
    assert head.result() == b"first"
    assert answers[:7] == [f"org{i}".encode() for i in range(7)]
    assert isinstance(answers[7], QuotaExceeded)
    assert len(batches) == 2
    assert sorted(batches[1]) == sorted([f"org{i}" for i in range(7)] + ["refused"])


def test_a_failed_batch_is_redone_one_by_one() -> None:
    commit = GroupCommit()
    calls: list[int] = []

    def batch(asks: list[Submit]) -> None:
        calls.append(len(asks))
        raise RuntimeError("the transaction failed")

    def alone(ask: Submit) -> bytes:
        if ask.org_id == "bad":
            raise ValueError("this one is broken")
        return ask.org_id.encode()

    # driven directly: a batch of three, one of which fails alone too
    asks = [Submit(SPEC, org, None) for org in ("a", "bad", "b")]
    submits._store(asks, batch, alone)
    assert calls == [3]
    assert asks[0].answer() == b"a" and asks[2].answer() == b"b"
    assert isinstance(asks[1].error, ValueError)
    # a lone submit whose batch fails gets that failure (no second try)
    lone = Submit(SPEC, "a", None)
    try:
        commit.submit(lone, batch, alone)
    except RuntimeError as exc:
        assert "transaction failed" in str(exc)
    else:
        raise AssertionError("expected the batch's failure")
    assert commit._leading is False and commit._queue == []


def test_concurrent_submits_with_one_idempotency_key_make_one_run(server: Server) -> None:
    token = server.new_org("same-key")

    def submit(_: int) -> tuple[int, str]:
        with server.client(token) as c:
            r = c.post(
                "/v1/runs",
                json={"command": ["true"], "machine": "nano"},
                headers={"Idempotency-Key": "one-run"},
            )
            return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(submit, range(64)))
    assert {code for code, _ in results} == {201}
    assert len({run_id for _, run_id in results}) == 1
    with server.client(token) as c:
        assert len(c.get("/v1/runs").json()["items"]) == 1


def test_concurrent_submits_of_two_orgs_keep_each_budget(server: Server) -> None:
    tokens = {
        "tight": server.new_org("tight", plan="pro", concurrent_shards=5),
        "roomy": server.new_org("roomy", plan="pro", concurrent_shards=1000),
    }

    def submit(org: str) -> tuple[str, int]:
        with httpx.Client(
            base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {tokens[org]}"}
        ) as c:
            spec = {"command": ["sleep", "60"], "machine": "nano"}
            return org, c.post("/v1/runs", json=spec).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(submit, ["tight", "roomy"] * 30))
    tight = [code for org, code in results if org == "tight"]
    roomy = [code for org, code in results if org == "roomy"]
    assert tight.count(201) == 5 and tight.count(429) == 25
    assert roomy.count(201) == 30
    for token in tokens.values():
        with server.client(token) as c:
            for run in c.get("/v1/runs", params={"limit": 200}).json()["items"]:
                c.post(f"/v1/runs/{run['id']}/cancel")


def test_a_commit_that_went_through_but_raised_stores_each_run_once(server: Server) -> None:
    """A batch's COMMIT that reached the store but whose acknowledgement was lost (on
    PostgreSQL: the connection dropped after COMMIT was sent) raises; the submits are then
    stored one by one, and each finds the run its batch stored instead of a second one."""
    plane = server.plane
    dialect = plane.engine.dialect
    real_commit = dialect.do_commit
    calls: list[int] = []

    def commit_then_lose_the_ack(dbapi_conn: Any) -> None:
        real_commit(dbapi_conn)
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    spec = RunSpec(command=["true"], machine="nano")
    asks = [Submit(spec, server.org_id, None), Submit(spec, server.org_id, None)]
    before = _runs_of(server)
    store = storing.Storing(plane.sessions, plane.executor, plane.now, lambda: None)
    dialect.do_commit = commit_then_lose_the_ack  # type: ignore[method-assign]
    try:
        submits._store(asks, store.batch, store.alone)
    finally:
        dialect.do_commit = real_commit  # type: ignore[method-assign]
    assert [a.error for a in asks] == [None, None]
    ids = [json.loads(a.answer())["id"] for a in asks]
    assert ids == [a.run_id for a in asks]
    assert _runs_of(server) - before == 2  # not 4


def _runs_of(server: Server) -> int:
    with server.plane.reads() as s:
        count = s.scalar(
            select(func.count()).select_from(RunRow).where(RunRow.org_id == server.org_id)
        )
    return int(count or 0)
