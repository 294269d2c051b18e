"""The reconciler's loop: exits that trickle in are settled a batch per pass; a submit or a
cancel (wake) starts a pass at once, or, under a stream of them, a pass's length after the
one before."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import migrated_sqlite
from sylphx._server.controller import loop as pass_loop
from sylphx._server.controller.reconciler import Reconciler
from sylphx._server.executors.stub import StubExecutor
from sylphx._server.store import make_engine, migrate, session_factory
from sylphx._settings import Settings

LONG = 60.0  # a batch period no test outlives: a pass that came only after it never came


class Passes:
    """Counts the reconciler's passes (its tick, replaced)."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.lock = threading.Condition()
        self.cpu = 0.0  # CPU seconds each pass burns
        self.sleep = 0.0  # and seconds it then waits (on the store, say)
        self.ended: list[float] = []

    def tick(self) -> None:
        with self.lock:
            self.started.append(time.monotonic())
            self.lock.notify_all()
        until = time.thread_time() + self.cpu
        while time.thread_time() < until:
            pass
        time.sleep(self.sleep)
        with self.lock:
            self.ended.append(time.monotonic())

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: len(self.started) >= n, timeout)


@pytest.fixture(params=[False], ids=["exits one by one"])
def loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[Reconciler, StubExecutor, Passes]]:
    monkeypatch.setattr(pass_loop, "EXIT_BATCH_SECONDS", LONG)
    engine = make_engine(migrated_sqlite(tmp_path / "db.sqlite"))
    migrate(engine)
    # it keeps the waker the reconciler gives it, as a real one
    executor = StubExecutor(batches_exits=request.param)
    settings = Settings(home=tmp_path, database_url="unused", reconcile_interval=30)
    rec = Reconciler(session_factory(engine), executor, settings)
    passes = Passes()
    monkeypatch.setattr(rec, "tick", passes.tick)
    rec.start()
    assert passes.wait_for(1)  # the first pass runs at start
    assert executor.waker is not None
    yield rec, executor, passes
    rec.stop()


def test_exits_that_trickle_in_are_settled_in_one_pass(
    loop: tuple[Reconciler, StubExecutor, Passes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, executor, passes = loop
    batch = 0.5  # the 20 notes come within it (~0.1 s); its passes are counted after it
    monkeypatch.setattr(pass_loop, "EXIT_BATCH_SECONDS", batch)
    for _ in range(20):  # 20 exit notes in quick succession
        executor.waker()
        time.sleep(0.005)
    assert passes.wait_for(2)
    time.sleep(0.2)  # no pass for each of the other notes
    assert len(passes.started) == 2
    assert passes.started[1] - passes.started[0] >= batch


def test_exits_after_a_pass_that_settled_a_burst_are_settled_at_once(
    loop: tuple[Reconciler, StubExecutor, Passes],
) -> None:
    rec, executor, passes = loop
    rec._last_exits = pass_loop.EXIT_BATCH  # the last pass settled a burst of exits
    executor.waker()
    assert passes.wait_for(2)  # well before the batch period is over


def test_a_wake_starts_a_pass_without_waiting_for_the_batch(
    loop: tuple[Reconciler, StubExecutor, Passes],
) -> None:
    rec, executor, passes = loop
    executor.waker()  # an exit note: its pass waits for the batch period ...
    rec.wake()  # ... which a submit cuts short
    assert passes.wait_for(2)  # well before the batch period is over


def test_stop_does_not_wait_for_the_batch(
    loop: tuple[Reconciler, StubExecutor, Passes],
) -> None:
    rec, executor, _ = loop
    executor.waker()  # its pass would wait LONG
    rec.stop()  # joins the loop for at most 10 s
    assert rec._thread is not None and not rec._thread.is_alive()


@pytest.mark.parametrize("loop", [True], ids=["exits in batches"], indirect=True)
def test_an_executor_that_batches_its_exits_wakes_a_pass_at_once(
    loop: tuple[Reconciler, StubExecutor, Passes],
) -> None:
    """Ray's exits come through the hub's feed, a round trip's worth at a time: waiting
    the batch period on top of it left freed slots idle (P6, 200 shards: a round's
    median 1.10 s with it, 0.89 s without)."""
    _, executor, passes = loop
    executor.waker()
    assert passes.wait_for(2)  # well before the batch period is over


def test_the_executors_say_how_their_exits_come() -> None:
    from sylphx._server.executors.local.executor import LocalExecutor
    from sylphx._server.executors.ray.executor import RayExecutor

    assert RayExecutor.batches_exits and not LocalExecutor.batches_exits


def _while_streaming(wake: Callable[[], None], passes: Passes, n: int) -> bool:
    """Call ``wake`` every 2 ms (a stream of exits or submits) until ``n`` passes began."""
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            wake()
            time.sleep(0.002)

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        return passes.wait_for(n)
    finally:
        stop.set()
        feeder.join()


@pytest.mark.parametrize("loop", [True], ids=["exits in batches"], indirect=True)
def test_a_stream_of_batched_exits_keeps_the_reconciler_at_most_half_busy(
    loop: tuple[Reconciler, StubExecutor, Passes],
) -> None:
    """Found by a review: without the batch period, a feed that always has news (one
    tenant's tiny shards ending all the time) ran passes back to back, and every other
    tenant's API calls share the reconciler's process."""
    _, executor, passes = loop
    passes.cpu = 0.03
    assert _while_streaming(executor.waker, passes, 8)
    gaps = [b - a for a, b in zip(passes.started[1:8], passes.started[2:8], strict=False)]
    assert min(gaps) >= 2 * passes.cpu * 0.95  # a pass, then a rest as long


@pytest.mark.parametrize("loop", [False, True], ids=["local", "exits in batches"], indirect=True)
@pytest.mark.parametrize("busy", [0.005, 0.04], ids=["short passes", "long passes"])
def test_a_stream_of_submits_gives_each_pass_a_rest(
    loop: tuple[Reconciler, StubExecutor, Passes], busy: float
) -> None:
    """P7: each commit of submits woke a pass at once, so under 16 busy clients passes ran
    back to back, ~13 runs each, holding SQLite's write lock ~96% of the time while every
    submit's commit waited for it. Now a woken pass waits as long as the one before took
    (from its end), at most WAKE_REST_SECONDS: the next commits' runs share a pass."""
    rec, _, passes = loop
    passes.cpu, passes.sleep = busy / 3, busy * 2 / 3  # most of a pass on the store
    assert _while_streaming(rec.wake, passes, 8)
    with passes.lock:
        started, ended = passes.started[1:8], passes.ended[1:8]
    for begin, end, following in zip(started, ended, started[1:], strict=False):
        rest = min(end - begin, pass_loop.WAKE_REST_SECONDS)
        assert following - end >= rest * 0.95  # a rest as long as the pass, capped


def test_a_wake_after_a_quiet_spell_starts_a_pass_at_once(
    loop: tuple[Reconciler, StubExecutor, Passes],
) -> None:
    rec, _, passes = loop
    passes.sleep = 1.0  # a long pass ...
    rec.wake()
    assert passes.wait_for(2)
    passes.sleep = 0.0
    time.sleep(1.5)  # ... that ended more than its length ago
    woken = time.monotonic()
    rec.wake()
    assert passes.wait_for(3)
    assert passes.started[2] - woken < 0.9  # not paced: no rest of a second first


def test_a_wake_after_a_long_or_failed_pass_waits_at_most_a_moment(
    loop: tuple[Reconciler, StubExecutor, Passes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review (of a first version without the cap): a pass slowed by a store
    that was away (SQLite waits up to 30 s for its lock) made the next woken pass rest as
    long again, holding every org's cancels and deadlines back. The rest is capped, and a
    pass that failed paces nothing."""
    rec, _, passes = loop
    passes.sleep = 1.5  # a pass slowed by its store ...
    rec.wake()
    assert passes.wait_for(2)
    passes.sleep = 0.0
    rec.wake()  # ... and a cancel while it ran
    assert passes.wait_for(3)
    assert passes.started[2] - passes.ended[1] < 1.0  # not 1.5 s: WAKE_REST_SECONDS
    assert pass_loop.WAKE_REST_SECONDS <= 0.25

    failed: list[float] = []

    def failing() -> None:
        passes.tick()
        time.sleep(1.5)
        monkeypatch.setattr(rec, "tick", passes.tick)  # the next one goes through
        failed.append(time.monotonic())
        raise RuntimeError("the store went away")

    monkeypatch.setattr(pass_loop, "WAKE_REST_SECONDS", 10.0)  # (no cap in the way)
    monkeypatch.setattr(rec, "tick", failing)
    rec.wake()
    assert passes.wait_for(4)
    rec.wake()  # a cancel while it fails
    assert passes.wait_for(5)
    assert passes.started[4] - failed[0] < 1.0  # at once: the failed pass paces nothing
