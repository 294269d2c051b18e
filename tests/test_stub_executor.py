"""The stub executor (executors/stub.py): it is an Executor, member for member (mypy checks
the same in the module itself), and it keeps the interface's contract where a test could
tell: launches start at the flush, once per attempt; each exit is polled once; signals end
what they should; the waker rings when an attempt ends."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pytest

from sylphx._core.machines import Resources
from sylphx._server.executors.base import Executor, LaunchRequest
from sylphx._server.executors.stub import ManualClock, StubExecutor

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _members(protocol: type) -> dict[str, object]:
    """What a protocol declares: its methods and its annotated attributes."""
    declared: dict[str, object] = {
        name: value
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    declared.update(dict.fromkeys(protocol.__annotations__))
    return declared


def test_the_stub_has_every_member_of_the_executor_protocol_with_its_parameters() -> None:
    assert Protocol in Executor.__mro__
    stub = StubExecutor()
    members = _members(Executor)
    assert {"launch", "flush", "poll", "signal", "set_waker", "reserve_gang"} <= set(members)
    for name, declared in members.items():
        assert hasattr(stub, name), name
        if declared is None:  # an attribute (the executor's name)
            continue
        ours = inspect.signature(getattr(StubExecutor, name))
        theirs = inspect.signature(declared)
        assert [(p.name, p.kind) for p in ours.parameters.values()] == [
            (p.name, p.kind) for p in theirs.parameters.values()
        ], name
        assert inspect.getdoc(getattr(StubExecutor, name)), name
    assert isinstance(stub.name, str) and stub.name == "stub"


def _request(run_id: str = "wrk_1", index: int = 0, attempt: int = 1) -> LaunchRequest:
    return LaunchRequest(
        run_id=run_id,
        index=index,
        attempt=attempt,
        count=2,
        indexed=True,
        command=["true"],
        env={},
        machine="nano",
        stdout_path="/dev/null",
        stderr_path="/dev/null",
        working_dir=Path("/"),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def stub(clock: ManualClock) -> StubExecutor:
    return StubExecutor(Resources.of_host(2, 4 << 30), clock=clock)


def test_a_launch_starts_at_the_flush_and_once_per_attempt(
    stub: StubExecutor, clock: ManualClock
) -> None:
    handle = stub.launch(_request())
    assert stub.launch(_request()) == handle  # the same attempt: the same handle
    assert stub.adopt(handle) and not stub.started(handle) and not stub.alive(handle)
    assert stub.live == {}
    clock.advance(5)
    stub.flush()
    assert stub.started(handle) and stub.alive(handle) and list(stub.live) == [handle]
    assert stub.attempt(handle).started_at == clock()
    assert stub.launch(_request()) == handle  # launched again after a restart: adopted
    stub.flush()
    assert len(stub.live) == 1
    assert stub.capacity() == Resources.of_host(2, 4 << 30)


def test_a_discarded_flush_or_a_drop_starts_nothing(stub: StubExecutor) -> None:
    first = stub.launch(_request(index=0))
    stub.flush(discard=True)  # the pass was rolled back
    assert not stub.adopt(first) and stub.live == {}
    kept, dropped = stub.launch(_request(index=0)), stub.launch(_request(index=1))
    stub.drop([dropped])  # that run's savepoint was rolled back
    stub.flush()
    assert list(stub.live) == [kept] and not stub.adopt(dropped)
    stub.drop([kept])  # started: a drop does not touch it
    assert stub.alive(kept)


def test_exits_are_stamped_by_the_clock_and_polled_once(
    stub: StubExecutor, clock: ManualClock
) -> None:
    rings: list[None] = []
    stub.set_waker(lambda: rings.append(None))
    a, b = stub.launch(_request(index=0)), stub.launch(_request(index=1))
    stub.flush()
    clock.advance(600)
    assert stub.finish(1, 3) == [b] and len(rings) == 1
    (exit,) = stub.poll()
    assert (exit.handle, exit.returncode, exit.ended_at) == (b, 3, T0.replace(minute=10))
    assert exit.started_at == T0 and not exit.lost
    assert stub.poll() == []
    assert stub.finish(1) == []  # nothing of shard 1 runs any more
    assert stub.lose(0, run_id="wrk_1") == [a]
    (exit,) = stub.poll()
    assert exit.lost and stub.live == {} and len(rings) == 2
    assert stub.started(a) and stub.adopt(a)  # ended, still known until the run is forgotten
    stub.forget_run("wrk_1")
    assert not stub.adopt(a) and stub.forgotten == ["wrk_1"]


def test_signals_end_what_they_should(stub: StubExecutor) -> None:
    a, b = stub.launch(_request(index=0)), stub.launch(_request(index=1))
    stub.flush()
    stub.ignore_term = True  # a shard that traps SIGTERM
    stub.signal(a, "term")
    assert stub.alive(a) and stub.poll() == []
    stub.signal(a, "kill")
    stub.ignore_term = False
    stub.signal(b, "term")
    assert [(e.handle, e.returncode) for e in stub.poll()] == [(a, -9), (b, -15)]
    stub.signal(b, "kill")  # already ended: recorded, nothing more
    assert stub.poll() == []
    assert stub.signals == [(a, "term"), (a, "kill"), (b, "term"), (b, "kill")]
    assert stub.attempt(a).signals == ["term", "kill"]


def test_gang_reservations_are_recorded_and_answered_as_told(stub: StubExecutor) -> None:
    assert stub.reserve_gang("wrk_1", 3, "nano")
    stub.gangs_ready = False
    assert not stub.reserve_gang("wrk_1", 3, "nano")
    assert stub.reservations == [("wrk_1", 3, "nano")] * 2
    stub.close()
    assert stub.closed


def test_a_new_stub_knows_no_attempt_of_an_old_one(clock: ManualClock) -> None:
    old = StubExecutor(clock=clock)
    handle = old.launch(_request())
    old.flush()
    new = StubExecutor(clock=clock)
    assert not new.adopt(handle) and not new.started(handle)
    assert StubExecutor.handle_of("wrk_1", 0, 1) == handle


def test_with_reported_starts_an_attempt_starts_when_placed(clock: ManualClock) -> None:
    stub = StubExecutor(clock=clock, reports_starts=True)
    assert StubExecutor().reports_starts is False
    a, b = stub.launch(_request(index=0)), stub.launch(_request(index=1))
    stub.flush()  # handed over: waiting to be placed, not started
    assert stub.started(a) and stub.alive(a) and stub.attempt(a).started_at is None
    assert stub.starts() == []
    clock.advance(7)
    assert stub.start(1) == [b]
    assert stub.starts() == [(b, clock())] and stub.starts() == []
    assert stub.start(1) == []  # already started
    stub.finish_all(0)
    exits = {e.handle: e for e in stub.poll()}
    assert exits[a].started_at is None and exits[b].started_at == clock()


def test_forgetting_a_run_drops_its_launches_not_yet_flushed(stub: StubExecutor) -> None:
    gone, kept = stub.launch(_request("wrk_1")), stub.launch(_request("wrk_2"))
    stub.forget_run("wrk_1")
    stub.flush()
    assert list(stub.live) == [kept] and not stub.adopt(gone)
