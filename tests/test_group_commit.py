"""Group commit of submits (runs.submits): concurrent submits share one transaction, each
answered only after it committed; a refusal is its own, a failed batch is redone one by one.

The budget race under batches is test_quotas' 200 concurrent submits; kill -9 during
concurrent submits is test_faults'. Both run on the session's store (SQLite or PostgreSQL).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from conftest import Server
from sylphx._core.errors import QuotaExceeded, ServerUnavailable
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.spec import RunSpec
from sylphx._core.states import ShardState
from sylphx._core.views import ShardView
from sylphx._server.runs import service, storing, submits
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
    assert commit._queue == []


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


def _runs_with_key(server: Server, key: str) -> int:
    with server.plane.reads() as s:
        query = select(func.count()).select_from(RunRow).where(RunRow.idempotency_key == key)
        return int(s.scalar(query) or 0)


def test_one_key_twice_in_a_batch_makes_one_run_and_wakes_the_reconciler(
    server: Server,
) -> None:
    """A repeated key inside one batch: one run, both answered with it, and the reconciler
    woken (the runs inserted before the repeat count as stored); another spec under that
    key is a 409 of its own while the rest are stored."""
    plane = server.plane
    wakes: list[int] = []
    store = storing.Storing(plane.sessions, plane.executor, plane.now, lambda: wakes.append(1))
    other = RunSpec(command=["false"], machine="nano")
    asks = [
        Submit(SPEC, server.org_id, "twice"),
        Submit(SPEC, server.org_id, "twice"),
        Submit(other, server.org_id, "twice"),
    ]
    submits._store(asks, store.batch, store.alone)
    first, again = (json.loads(ask.answer())["id"] for ask in asks[:2])
    assert first == again and _runs_with_key(server, "twice") == 1
    assert type(asks[2].error).__name__ == "ConflictError"
    assert wakes, "a run was stored, but the reconciler was not woken"


def test_a_committer_that_could_not_start_is_started_by_the_next_submit(
    monkeypatch: Any,
) -> None:
    """No thread to be had (pids exhausted, say): that submit is refused, and the next
    one starts the committer instead of waiting forever for one that never came."""
    commit = GroupCommit()
    real = threading.Thread.start
    calls = [0]

    def start_once_failing(thread: threading.Thread) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("can't start new thread")
        real(thread)

    def batch(asks: list[Submit]) -> None:
        for ask in asks:
            ask.body = b"ok"

    monkeypatch.setattr(threading.Thread, "start", start_once_failing)
    try:
        commit.submit(Submit(SPEC, "a", None), batch, lambda ask: b"ok")
    except RuntimeError as exc:
        assert "can't start" in str(exc)
    else:
        raise AssertionError("expected the failed start")
    answers: list[bytes] = []
    waiter = threading.Thread(
        target=lambda: answers.append(commit.submit(Submit(SPEC, "b", None), batch, batch_one)),
        daemon=True,
    )
    real(waiter)
    waiter.join(10)
    assert answers == [b"ok"], "the next submit waited for a committer that never came"


def batch_one(ask: Submit) -> bytes:
    return b"ok"


def test_no_body_of_a_rolled_back_batch_is_an_answer() -> None:
    """A batch of two set its bodies, then failed; redoing each alone failed with a
    BaseException: both waiters get that failure, never the rolled-back batch's body."""
    commit = GroupCommit()
    release = threading.Event()

    def batch(asks: list[Submit]) -> None:
        if asks[0].org_id == "first":  # holds the committer until the two queued
            release.wait(10)
            asks[0].body = b"ok"
            return
        for ask in asks:
            ask.body = b"from-the-rolled-back-batch"
        raise RuntimeError("COMMIT failed")

    def alone(ask: Submit) -> bytes:
        raise SystemExit("stopped")  # not an Exception

    answers: dict[str, object] = {}

    def submit(org: str) -> None:
        try:
            answers[org] = commit.submit(Submit(SPEC, org, None), batch, alone)
        except BaseException as exc:
            answers[org] = exc

    threads = [threading.Thread(target=submit, args=(org,)) for org in ("first", "a", "b")]
    threads[0].start()
    while commit._thread is None or commit._queue:  # the committer took the first
        threading.Event().wait(0.01)
    for thread in threads[1:]:
        thread.start()
    while len(commit._queue) < 2:
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join(10)
    assert answers["first"] == b"ok"
    assert isinstance(answers["a"], SystemExit) and isinstance(answers["b"], SystemExit), answers


def test_close_answers_the_queued_submits_then_refuses_new_ones() -> None:
    """The plane stops: what is queued is stored and answered, the committer ends, and
    a later submit is refused (503) instead of waiting for nobody."""
    commit = GroupCommit()
    stored: list[str] = []

    def batch(asks: list[Submit]) -> None:
        for ask in asks:
            stored.append(ask.org_id)
            ask.body = b"ok"

    assert commit.submit(Submit(SPEC, "a", None), batch, batch_one) == b"ok"
    commit.close()
    assert commit._thread is not None and not commit._thread.is_alive()
    try:
        commit.submit(Submit(SPEC, "b", None), batch, batch_one)
    except ServerUnavailable:
        pass
    else:
        raise AssertionError("a submit after close was queued")
    assert stored == ["a"]


WIRE_SPECS = [
    {"command": ["true"]},
    {
        "command": ["python", "-c", "print(1)"],
        "parallelism": 9,
        "completionMode": "Indexed",
        "gangScheduling": False,
        "backoffLimitPerIndex": 12,
        "machine": "large",
        "env": {"A": "1", "B": "é"},
        "volumeMounts": [{"volumeId": "vol_1", "mountPath": "/cache"}],
        "timeoutSeconds": 7200,
        "workingDir": "/srv/job",
        "network": False,
        "secrets": ["TOKEN"],
        "maxFailedIndexes": 2,
        "maxComputeSeconds": 12.5,
        "retryBackoff": {"initialSeconds": 2, "maxSeconds": 30},
        "failurePolicy": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}],
        "merge": {"command": ["cat"]},
    },
    {
        "image": "docker.io/library/alpine:3.20",
        "parallelism": 4,
        "admissionTimeoutSeconds": 30,
        "admissionFallback": "opportunistic",
    },
]


@pytest.mark.parametrize("wire", WIRE_SPECS, ids=["minimal", "every-field", "image-gang"])
def test_a_submits_answer_is_the_stored_runs_view(wire: dict[str, Any]) -> None:
    """The 201's view is built from the submit's own parsed spec and its new row's values
    (no ORM object, no second parse): byte for byte the view the same row renders
    through the stored spec (the API test below reads it back from the store)."""
    spec = RunSpec.model_validate(wire)
    now = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    values = service.new_row(spec, "org_x", now, run_id="wrk_0123456789abcdef")
    counts = Counter({ShardState.PENDING: spec.parallelism})
    merge = ShardView(index=MERGE_INDEX, status=ShardState.PENDING) if spec.merge else None
    answered = service.view(SimpleNamespace(**values), counts, merge=merge, spec=spec)
    stored = service.view(RunRow(**values), counts, merge=merge)
    assert answered.model_dump_json(by_alias=True) == stored.model_dump_json(by_alias=True)


def test_a_submits_answer_shows_the_spec_a_get_reads_back(tenant: Server) -> None:
    """Through the API, on the session's store: the spec in the 201 (rendered from the
    submit's own parse) is the one every later GET renders from the stored run."""
    specs: list[dict[str, Any]] = [
        {"command": ["true"], "machine": "nano"},
        {
            "command": ["sh", "-c", "exit 0"], "parallelism": 3, "machine": "nano",
            "completionMode": "Indexed", "gangScheduling": False, "backoffLimitPerIndex": 0,
            "env": {"A": "1", "B_2": "ü \u2028 🚀"}, "timeoutSeconds": 60, "network": False,
            "maxFailedIndexes": 1, "maxComputeSeconds": 12.5,
            "retryBackoff": {"initialSeconds": 1, "maxSeconds": 5},
            "failurePolicy": [
                {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}
            ],
            "merge": {"command": ["true"]},
        },
    ]  # fmt: skip
    for wire in specs:
        answer = tenant.http.post("/v1/runs", json=wire)
        assert answer.status_code == 201, answer.text
        run = answer.json()
        assert tenant.http.get(f"/v1/runs/{run['id']}").json()["spec"] == run["spec"]
