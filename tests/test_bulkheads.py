"""Bulkheads: a failure that concerns one run ends or parks that run, with a message saying
why, and every other run -- of every org -- goes on (see controller/bulkhead.py).

The first tests use a real control plane (the local executor, real processes) on the
session's store; the rest the reconciler with the stub executor and a manual clock, also on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update

from conftest import Server, database_url_for, pids_of_run
from sylphx._core.errors import ExecutorError, StorageFull
from sylphx._server.controller import bulkhead, launching, reconciler, scheduling, settle
from sylphx._server.controller.policy.admission import Resources
from sylphx._server.controller.reconciler import Reconciler
from sylphx._server.executors.base import LaunchRequest
from sylphx._server.store import AttemptRow, RunRow, runwrites
from sylphx._server.tenancy import billing
from test_reconciler import Harness

STOPPED = "the run was stopped so other runs go on"


class Gate:
    """Holds the reconciler's passes: the next one waits until :meth:`open`; with
    ``then_hold``, the one after that waits for the next :meth:`open` too."""

    def __init__(self, rec: Reconciler, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = rec.tick
        self._gate = threading.Event()
        self._parked = threading.Event()
        self._hold_next = False
        monkeypatch.setattr(rec, "tick", self._tick)
        rec.wake()
        assert self._parked.wait(10), "the reconciler never came to the gate"

    def _tick(self) -> None:
        self._parked.set()
        self._gate.wait(60)
        if self._hold_next:
            self._hold_next = False
            self._gate.clear()
            self._parked.clear()
        self._real()

    def open(self, *, then_hold: bool = False) -> None:
        self._hold_next = then_hold
        self._parked.clear()
        self._gate.set()

    def wait_parked(self) -> None:
        assert self._parked.wait(10), "the reconciler never came back to the gate"


def test_a_launch_and_a_settle_that_raise_end_their_runs_and_no_other_orgs(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    rival = server.client(server.new_org("rival"))
    rec = server.plane.reconciler
    gate = Gate(rec, monkeypatch)  # every run below is in the same first pass

    def submit(http: Any, **spec: Any) -> str:
        r = http.post("/v1/runs", json={"machine": "nano", **spec})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    quick = ["sh", "-c", "sleep 0.5; echo done"]
    bad_gang = submit(server.http, command=quick, parallelism=2)  # retry budget 0
    bad_opp = submit(
        server.http, command=quick, parallelism=2, gangScheduling=False, backoffLimitPerIndex=3
    )
    bad_settle = submit(server.http, command=quick)
    good = [
        submit(rival, command=quick, parallelism=3, gangScheduling=False),
        submit(rival, command=quick, parallelism=2),
    ]
    mine = submit(server.http, command=quick)  # the same org's healthy run goes on too

    executor = server.plane.executor
    real_launch = executor.launch

    def launch(request: LaunchRequest) -> str:
        if request.run_id in (bad_gang, bad_opp):
            raise ValueError("injected launch failure")
        return real_launch(request)

    real_finish = settle.finish

    def finish(attempt: Any, *args: Any) -> Any:
        if attempt.run_id == bad_settle:
            raise RuntimeError("injected settle failure")
        return real_finish(attempt, *args)

    real_settle = settle.settle
    batches: list[set[str]] = []  # the runs whose exits each settle() was given

    def settle_all(s: Any, exits: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append({exit.handle.removeprefix("att:").split("/")[0] for exit in exits})
        return real_settle(s, exits, *args, **kwargs)

    monkeypatch.setattr(executor, "launch", launch)
    monkeypatch.setattr(settle, "finish", finish)
    monkeypatch.setattr(settle, "settle", settle_all)
    # Pass 1 starts everything; the pass after it waits until every process has ended,
    # so the bad run's exit is settled in one batch with the others'.
    # (The pass hands its batch over as it ends: the processes may not exist yet when it
    # parks, so it waits for every exit record, then for the processes to be gone.)
    gate.open(then_hold=True)
    gate.wait_parked()
    state = server.plane.executor.state_dir  # type: ignore[attr-defined]
    runs = (bad_settle, mine, *good)
    server.wait_for(lambda: sum(len(list((state / r).glob("*/exit"))) for r in runs) == 7)
    server.wait_for(lambda: not any(pids_of_run(r) for r in runs))
    time.sleep(0.2)  # their supervisors announce the exits
    gate.open()

    for run_id in good:
        assert _wait(rival, run_id)["status"] == "succeeded"
    assert {bad_settle, *good} <= next(b for b in batches if bad_settle in b)  # one batch
    assert server.wait(mine)["status"] == "succeeded"

    gang = server.wait(bad_gang)  # budget 0: both launches failed, so the run did
    why = "Internal error while starting its shards: ValueError: injected launch failure"
    assert gang["status"] == "failed" and gang["message"].startswith(why), gang
    for shard in server.shards(bad_gang):
        assert shard["exitCode"] == 127
        assert shard["reason"] == (
            "LaunchError: internal error: ValueError: injected launch failure"
        )

    opp = server.wait(bad_opp)  # retried: the same error three passes in a row ends it
    assert opp["status"] == "failed", opp
    assert opp["message"] == f"{why} (3 passes in a row); {STOPPED}"
    assert {s["status"] for s in server.shards(bad_opp)} == {"failed"}

    broken = server.wait(bad_settle)
    why = "Internal error while settling its shards' exits: RuntimeError: injected settle failure"
    assert broken["status"] == "failed" and broken["message"] == f"{why}; {STOPPED}"
    (shard,) = server.shards(bad_settle)
    assert shard["status"] == "failed" and shard["exitCode"] == 0  # its exit, kept
    assert broken["computeSeconds"] > 0  # and its attempt billed


def _wait(http: Any, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = dict(http.get(f"/v1/runs/{run_id}").json())
        if view["status"] not in ("queued", "running"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_a_spec_that_no_longer_parses_ends_its_run_only(server: Server) -> None:
    rival = server.client(server.new_org("rival"))
    victim = server.submit(command=["sleep", "60"], machine="nano")["id"]
    server.wait_for(lambda: server.get(victim)["status"] == "running" and bool(pids_of_run(victim)))
    with server.plane.sessions.begin() as s:  # as if written by a version that no longer parses
        row = s.get(RunRow, victim)
        assert row is not None
        spec = {**row.spec, "command": 42}
        s.execute(
            update(RunRow).where(RunRow.id == victim).values(spec=spec, version=RunRow.version + 1)
        )
    r = rival.post("/v1/runs", json={"command": ["true"], "machine": "nano", "parallelism": 2})
    assert r.status_code == 201, r.text
    assert _wait(rival, r.json()["id"])["status"] == "succeeded"
    view = server.wait(victim)
    assert view["status"] == "failed"
    assert view["message"].startswith("Internal error while reading its spec: ValidationError:")
    assert view["message"].endswith(STOPPED)
    server.wait_for(lambda: not pids_of_run(victim))  # its process was killed
    (shard,) = server.shards(victim)
    assert shard["status"] == "failed" and shard["reason"] == view["message"]


# -- the reconciler alone: the stub executor and a manual clock, on the session's store ----


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path, database_url_for(tmp_path))


def _fail_for(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, bad: set[str], key: Callable[..., str]
) -> None:
    """Make ``module.name`` raise for the runs in ``bad`` (``key`` finds the run id)."""
    real = getattr(module, name)

    def broken(*args: Any, **kwargs: Any) -> Any:
        if key(*args, **kwargs) in bad:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, broken)


def test_a_policy_error_parks_the_run_and_three_in_a_row_end_it(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, other = h.submit(parallelism=2, machine="nano"), h.submit(machine="nano")
    h.tick()  # both start
    broken: set[str] = set()
    _fail_for(monkeypatch, scheduling, "expire_admission", broken, lambda _, run, *__: run.id)
    broken.add(bad)
    why = "Internal error while checking its admission deadline: RuntimeError: injected"
    for n in (1, 2):
        h.tick(1)
        view = h.run(bad)
        assert view["status"] == "running"
        assert view["message"] == (
            f"{why}; tried again next pass ({n} of 3 in a row: then the run is stopped)"
        )
    assert h.executor.signals == []
    h.tick(1)
    view = h.run(bad)
    assert view["status"] == "failed"
    assert view["message"] == f"{why} (3 passes in a row); {STOPPED}"
    assert sorted(sig for _, sig in h.executor.signals) == ["kill", "kill"]  # its shards
    assert all(s["status"] == "failed" for s in view["shards"])
    assert h.run(other)["status"] == "running" and h.run(other)["message"] is None
    h.executor.finish_all(0)
    h.tick(1)  # the killed shards' exits are already recorded: ignored
    assert h.run(other)["status"] == "succeeded"
    assert h.run(bad)["status"] == "failed"
    assert [(w, c) for w, c in h.usage(bad)] == [(3.0, 0.375)] * 2  # billed until the kill


def test_a_passing_error_parks_the_run_and_its_strikes_are_forgiven(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = h.submit(machine="nano")
    broken = {bad}
    _fail_for(monkeypatch, scheduling, "expire_admission", broken, lambda _, run, *__: run.id)
    h.tick()
    h.tick()
    assert "(2 of 3 in a row" in h.run(bad)["message"]
    broken.clear()  # it passes
    h.tick()
    assert h.run(bad)["status"] == "running" and h.run(bad)["message"] is None
    broken.add(bad)  # a new streak starts from one
    h.tick()
    assert "(1 of 3 in a row" in h.run(bad)["message"]
    broken.clear()
    h.executor.finish_all(0)
    h.tick()
    assert h.run(bad)["status"] == "succeeded"


def test_an_error_every_run_hits_is_the_passes_not_the_runs(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = h.submit(machine="nano"), h.submit(machine="nano")
    _fail_for(monkeypatch, scheduling, "expire_admission", {first, second}, lambda _, r, *__: r.id)
    for _ in range(4):  # a bug of the control plane: no run is blamed, none ended
        with pytest.raises(RuntimeError, match="injected"):
            h.tick()
    assert h.run(first)["status"] == h.run(second)["status"] == "queued"
    monkeypatch.undo()
    h.tick()
    assert h.run(first)["status"] == h.run(second)["status"] == "running"


def test_a_bad_value_the_queue_policy_trips_on_parks_that_run(h: Harness) -> None:
    bad, other = h.submit(machine="nano"), h.submit(machine="nano")
    with h.sessions.begin() as s:  # a machine tier this version does not know
        s.execute(update(RunRow).where(RunRow.id == bad).values(machine="quantum"))
    h.tick()
    assert h.run(other)["status"] == "running"
    with h.sessions() as s:  # (read as stored: a view of the run would meter its tier)
        row = s.get(RunRow, bad)
        assert row is not None and row.message is not None
        assert row.message.startswith(
            "Internal error while deciding whether it starts: KeyError: 'quantum'; tried again"
        )
    h.tick()
    h.tick()
    with h.sessions() as s:
        row = s.get(RunRow, bad)
        assert row is not None and row.state == "failed" and row.message is not None
        assert row.message.endswith(f"(3 passes in a row); {STOPPED}")


def test_when_storing_a_runs_exits_fails_the_others_are_still_settled(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, other = h.submit(machine="nano"), h.submit(machine="nano")
    h.tick()
    h.tick(5)
    real = billing.record

    def record(s: Any, rows: list[dict[str, object]]) -> None:  # the batch, then run by run
        if any(row["run_id"] == bad for row in rows):
            raise ValueError("injected write failure")
        real(s, rows)

    monkeypatch.setattr(billing, "record", record)
    h.executor.finish_all(3)  # both exits in one batch
    h.tick()
    view = h.run(other)
    assert view["status"] == "failed" and view["shards"][0]["exitCode"] == 3
    view = h.run(bad)
    why = "Internal error while settling its shards' exits: ValueError: injected write failure"
    assert view["status"] == "failed" and view["message"] == f"{why}; {STOPPED}"
    assert view["shards"][0]["exitCode"] == 3  # its exit is kept nonetheless
    monkeypatch.undo()


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_a_passs_launches_are_written_together_and_a_bad_write_is_one_runs(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempts and shards of every run a pass starts go out in one statement each;
    when that write fails, each run is started again under its own savepoint and the one
    whose rows cannot be written is parked, its launch dropped (no process without a row)."""
    ids = [h.submit(machine="nano") for _ in range(4)]
    sent: list[str] = []
    event.listen(
        h.sessions.kw["bind"],
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: sent.append(sql.split(" (")[0].split(" SET")[0]),
    )
    h.tick()
    assert sent.count("INSERT INTO attempts") == sent.count("UPDATE shards") == 1
    assert len(h.executor.live) == 4
    bad, *good = [h.submit(machine="nano") for _ in range(4)]
    real = launching.update_shards

    def update_shards(s: Any, shards: list[Any], keys: Any) -> None:
        if any(shard.run_id == bad for shard in shards):
            raise ValueError("injected write failure")
        real(s, shards, keys)

    monkeypatch.setattr(launching, "update_shards", update_shards)
    h.tick()
    assert {h.run(run_id)["status"] for run_id in [*ids, *good]} == {"running"}
    assert sorted(r.run_id for r in h.executor.live.values()) == sorted([*ids, *good])
    view = h.run(bad)
    assert view["status"] == "queued" and view["shards"][0]["status"] == "pending"
    assert view["message"].startswith(
        "Internal error while starting its shards: ValueError: injected write failure; tried"
    )
    monkeypatch.undo()
    h.tick()
    assert h.run(bad)["status"] == "running" and len(h.executor.live) == 8


def test_a_run_whose_savepoint_fails_to_commit_has_its_launch_dropped(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's call went through but its savepoint failed to commit (its row could not be
    written): the launch it queued is dropped with it, never started without its rows. (A
    stale row fails the whole pass instead, which drops every launch it queued.)"""
    bad, *good = [h.submit(machine="nano") for _ in range(3)]
    real = runwrites.compare_and_set

    def compare_and_set(conn: Any, table: Any, ids: list[str], seen: Any, values: Any) -> None:
        if bad in ids and values.get("state", [None])[ids.index(bad)] == "running":
            raise ValueError("injected: the run's row cannot be written")  # its start only
        real(conn, table, ids, seen, values)

    monkeypatch.setattr(runwrites, "compare_and_set", compare_and_set)
    h.tick()
    assert sorted(r.run_id for r in h.executor.live.values()) == sorted(good)
    assert h.run(bad)["status"] == "queued"
    assert "ValueError: injected" in h.run(bad)["message"]
    monkeypatch.undo()
    h.tick()
    assert h.run(bad)["status"] == "running" and len(h.executor.live) == 3


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_a_run_whose_spec_does_not_parse_is_ended_by_recovery(h: Harness) -> None:
    bad, other = h.submit(machine="nano"), h.submit(machine="nano")
    h.tick()
    with h.sessions.begin() as s:
        s.execute(update(RunRow).where(RunRow.id == bad).values(spec={"command": 42}))
    restarted = Reconciler(h.sessions, h.executor, h.reconciler.settings, clock=h.clock)
    restarted.recover()  # a new control plane re-adopts the live attempts
    view = h.run(bad)
    assert view["status"] == "failed"
    assert view["message"].startswith("Internal error while reading its spec: ValidationError")
    assert [sig for _, sig in h.executor.signals] == ["kill"]
    with h.sessions() as s:
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.run_id == bad)).all()
        assert all(a.ended_at is not None for a in attempts)
    restarted.tick()
    assert h.run(other)["status"] == "running"


def test_a_queued_or_running_run_with_pending_shards_always_says_why(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.executor.resources = Resources.of_host(1, 64 << 30)  # ten nano shards at once
    retried = h.submit(  # retried at once, each pass: its message says why it failed
        parallelism=2,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=2,
        retryBackoff={"initialSeconds": 0},
    )
    cases = {"retried": retried}
    for name, spec in (  # a millisecond apart: queued in this order, never by their random ids
        ("reserve", {"parallelism": 2}),  # a gang: it goes first
        ("capacity", {"parallelism": 8, "gangScheduling": False}),
        ("behind", {"parallelism": 4, "gangScheduling": False}),
    ):
        h.clock.advance(0.001)
        cases[name] = h.submit(machine="nano", **spec)
    real = h.executor.launch

    def launch(request: LaunchRequest) -> str:
        if request.run_id == retried:
            raise ExecutorError("no such image")
        return real(request)

    monkeypatch.setattr(h.executor, "launch", launch)
    h.executor.gangs_ready = False  # gang reservations wait (as a pending placement group)
    for _ in range(2):
        h.tick()
        _all_say_why(h, cases)
        assert "could not start: LaunchError: no such image" in h.run(retried)["message"]
        assert "reserve 2 x nano at once" in h.run(cases["reserve"])["message"]

    def full(*_: object) -> None:
        raise StorageFull("the log disk at /x is full")

    monkeypatch.setattr(reconciler.faults, "check_disk", full)  # and on a full log disk
    h.tick()
    _all_say_why(h, cases)
    assert "the log disk at /x is full" in h.run(cases["behind"])["message"]


def _all_say_why(h: Harness, cases: dict[str, str]) -> None:
    for name, run_id in cases.items():
        view = h.run(run_id)
        if view["status"] in ("queued", "running") and view["aggregate"]["pending"]:
            assert view["message"], (name, view)


def test_strikes_count_only_passes_that_committed() -> None:
    bh = bulkhead.Bulkhead()
    bh.begin()
    bh._next["wrk_x"] = ("starting its shards", 2)
    bh.begin()  # the pass was rolled back: nothing counted
    assert "wrk_x" not in bh._next
