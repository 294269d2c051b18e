"""The hub's slots (``slots.py``) as plain objects, without a cluster: which attempts run
in slots, how many slot tasks the hub starts, what a slot is handed and when it ends, and
how a queued attempt, a slot lost mid-attempt and a restart's dropped attempts end.
(The same code runs every plain shard of the Ray parity suite on a real cluster.)"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import WorkerCrashedError

from sylphx._server.executors.base import LaunchRequest
from sylphx._server.executors.ray import slots as ray_slots
from sylphx._server.executors.ray.attempts import outcome_exit
from sylphx._server.executors.ray.hub import LogHub
from sylphx._server.executors.ray.remote import NodeEnvelope
from sylphx._server.executors.ray.slots import SlotQueue, by_slot

RESULT: tuple[Any, ...] = (
    0,
    None,
    [],
    1.0,
    2.0,
)  # what run_shard returns: exit 0, started 1.0, ended 2.0


def request(index: int, machine: str = "nano", image: str | None = None) -> LaunchRequest:
    return LaunchRequest(
        run_id="run", index=index, attempt=1, count=8, indexed=True, command=["true"],
        env={}, machine=machine, stdout_path="", stderr_path="", working_dir=None,
        image=image,
    )  # fmt: skip


class SlotTasks:
    """Stands for the hub's slot task (``ray.remote(run_slot)``): records each one
    started, with the future its end is told through."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, Future[Any]]] = []  # (machine, slot, its end)

    def options(self, **opts: Any) -> Any:
        tasks, machine = self, {1.0: "standard", 0.1: "nano"}.get(opts["num_cpus"], "?")

        class Bound:
            def remote(self, name: str, slot: str, envelope: NodeEnvelope) -> Any:
                end: Future[Any] = Future()
                tasks.started.append((machine, slot, end))
                return type("Ref", (), {"future": lambda _: end})()

        return Bound()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> LogHub:
    monkeypatch.setattr(ray_slots, "LINGER", 0.05)
    out = LogHub()
    out._slot = SlotTasks()
    return out


def submit(hub: LogHub, *indexes: int, **kw: Any) -> None:
    assert (
        hub.submit([(f"h{i}", request(i, **kw), None) for i in indexes], "hub", NodeEnvelope())
        == {}
    )


def outcomes(hub: LogHub) -> dict[str, Any]:
    return {handle: out for handle, _, _, out in hub.changes(0, 0)[1] if out is not None}


def test_only_plain_attempts_run_in_slots() -> None:
    assert by_slot(("h", request(0), None))
    assert not by_slot(("h", request(0), 2))  # a gang member: its own bundle
    assert not by_slot(("h", request(0, image="alpine:3"), None))  # a pull a kill can stop


def test_a_slot_is_started_per_queued_attempt_no_slot_is_ready_for(hub: LogHub) -> None:
    submit(hub, 0, 1, 2)
    tasks: SlotTasks = hub._slot
    assert [m for m, _, _ in tasks.started] == ["nano"] * 3
    submit(hub, 0, 1)  # launches are idempotent
    submit(hub, 3, machine="standard")
    assert [m for m, _, _ in tasks.started] == ["nano"] * 3 + ["standard"]


def test_a_slot_runs_attempts_one_after_another_and_reports_each(hub: LogHub) -> None:
    submit(hub, 0, 1)
    slot = hub._slot.started[0][1]
    first = hub.take(slot, None)
    assert first is not None and first[0] == "h0"
    second = hub.take(slot, ("result", RESULT))  # h0 ended; h1 is next
    assert second is not None and second[0] == "h1"
    assert outcomes(hub)["h0"][0] == "result" and outcomes(hub)["h0"][2] == RESULT
    assert hub.take(slot, ("error", "ValueError: boom")) is None  # nothing left: it ends
    assert outcomes(hub)["h1"][0::2] == ("error", "ValueError: boom")
    submit(hub, 2)  # the other slot started for them has not asked yet: it will run h2
    assert len(hub._slot.started) == 2
    got = hub.take(hub._slot.started[1][1], None)
    assert got is not None and got[0] == "h2"
    submit(hub, 3)  # every slot is busy or ended: a new one
    assert len(hub._slot.started) == 3


def test_an_idle_slot_is_handed_the_next_attempt_without_a_new_slot(
    hub: LogHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_slots, "LINGER", 5.0)
    submit(hub, 0)
    slot = hub._slot.started[0][1]
    assert hub.take(slot, None) is not None
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(hub.take(slot, ("result", RESULT))))
    waiter.start()
    deadline = time.monotonic() + 5
    while not hub._slots._waiting[("nano", NodeEnvelope())] and time.monotonic() < deadline:
        time.sleep(0.01)
    submit(hub, 1)
    waiter.join(5)
    assert got and got[0] is not None and got[0][0] == "h1"
    assert len(hub._slot.started) == 1  # the waiting slot took it


def test_a_queued_attempt_signalled_is_cancelled_there_and_never_handed_out(
    hub: LogHub,
) -> None:
    submit(hub, 0, 1)
    hub.signal("h0", "term")
    assert outcomes(hub)["h0"][0] == "cancelled"
    slot = hub._slot.started[0][1]
    got = hub.take(slot, None)
    assert got is not None and got[0] == "h1"


def test_an_attempt_forgotten_while_queued_is_skipped(hub: LogHub) -> None:
    submit(hub, 0, 1)
    hub.forget_many(["h0"])
    got = hub.take(hub._slot.started[0][1], None)
    assert got is not None and got[0] == "h1"


def test_a_slot_lost_with_its_worker_loses_its_attempt_and_only_it(hub: LogHub) -> None:
    submit(hub, 0, 1)
    (_, a, a_end), (_, b, _) = hub._slot.started
    assert hub.take(a, None) is not None
    assert hub.take(b, None) is not None
    a_end.set_exception(WorkerCrashedError())
    assert list(outcomes(hub)) == ["h0"] and outcomes(hub)["h0"][0] == "lost"


def test_a_slot_that_ended_before_it_asked_is_replaced_at_the_next_feed_read(
    hub: LogHub,
) -> None:
    submit(hub, 0)
    hub._slot.started[0][2].set_exception(WorkerCrashedError())  # e.g. its node died
    assert outcomes(hub) == {}  # it held no attempt
    assert len(hub._slot.started) == 2  # changes() started another one for h0
    got = hub.take(hub._slot.started[1][1], None)
    assert got is not None and got[0] == "h0"


def test_an_attempt_dropped_by_a_restart_is_killed_at_its_slots_next_push(
    hub: LogHub, tmp_path: Path
) -> None:
    submit(hub, 0, 1)
    slot = hub._slot.started[0][1]
    assert hub.take(slot, None) is not None  # h0 runs
    assert hub.retain(["h1"]) == ["h0"]
    paths = (str(tmp_path / "out"), str(tmp_path / "err"))
    assert hub.push("h0", "node-a", paths, b"", b"", 1.0) == "kill"
    assert hub.push("h1", "node-a", paths, b"", b"", 1.0) is None


def test_attempts_a_restart_dropped_while_queued_get_no_slot(hub: LogHub) -> None:
    submit(hub, 0, 1)
    for _, _, end in hub._slot.started:  # both slots died before they asked (a lost node)
        end.set_exception(WorkerCrashedError())
    assert hub.retain(["h1"]) == ["h0"]
    outcomes(hub)  # a feed read starts the slots the queue is short of
    assert len(hub._slot.started) == 3  # one for h1, none for h0
    got = hub.take(hub._slot.started[2][1], None)
    assert got is not None and got[0] == "h1"


def test_the_queue_counts_waiting_and_starting_slots() -> None:
    lock, nano = threading.Lock(), ("nano", NodeEnvelope())
    queue = SlotQueue(lock)
    with lock:
        for i in range(3):
            queue.queue(f"h{i}", request(i), nano[1])
        assert queue.short() == {nano: 3}
        queue.add("s1", nano)
        assert queue.short() == {nano: 2}  # s1 will ask
        assert queue.next("s1", lambda h: True) is not None
        assert queue.short() == {nano: 2}
        assert queue.ended("s1") is not None
        assert queue.running("h0") is False
        assert queue.clear(nano) == ["h1", "h2"] and queue.short() == {}


def test_the_newest_idle_slot_is_woken_so_the_others_end_at_their_linger(
    hub: LogHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_slots, "LINGER", 1.0)
    submit(hub, 0, 1)
    old, new = (slot for _, slot, _ in hub._slot.started)
    assert hub.take(old, None) is not None and hub.take(new, None) is not None
    got: dict[str, Any] = {}
    for slot in (old, new):  # both go idle, ``old`` first
        waiter = threading.Thread(
            target=lambda s=slot: got.update({s: hub.take(s, ("result", RESULT))})
        )
        waiter.start()
        deadline = time.monotonic() + 5
        while len(hub._slots._idle.get(("nano", NodeEnvelope()), [])) < (1 if slot == old else 2):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    submit(hub, 2)
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got[new] is not None and got[new][0] == "h2"
    assert got[old] is None  # idle the longest: it ended
    assert len(hub._slot.started) == 2


def test_a_slot_runs_only_attempts_submitted_with_its_envelope(hub: LogHub) -> None:
    submit(hub, 0)
    stricter = NodeEnvelope(max_log_bytes=1 << 20)  # e.g. settings changed by a restart
    assert hub.submit([("h1", request(1), None)], "hub", stricter) == {}
    (_, first, _), (_, second, _) = hub._slot.started  # one slot per envelope
    got = hub.take(first, None)
    assert got is not None and got[0] == "h0"
    assert hub.take(first, ("result", RESULT)) is None  # h1 is not its kind
    got = hub.take(second, None)
    assert got is not None and got[0] == "h1"


def test_a_refused_outcome_is_an_attempt_that_never_started() -> None:
    done = outcome_exit("h", ("refused", 5.0, "no such resource"), lambda: None)
    assert (done.returncode, done.launched) == (127, False)
    assert done.reason == "LaunchError: the Ray cluster refused it: no such resource"


def test_the_attempts_of_a_kind_ray_refuses_slots_for_are_refused(hub: LogHub) -> None:
    class Refused:
        def remote(self, *args: Any) -> Any:
            raise ValueError("no such resource")

    hub._slot = type("Refusing", (), {"options": lambda self, **opts: Refused()})()
    submit(hub, 0, 1)
    got = outcomes(hub)
    assert sorted(got) == ["h0", "h1"]
    assert got["h0"][0] == "refused" and got["h0"][2] == "no such resource"
    assert hub._slots.short() == {}  # none queued, none counted as starting
    assert not hub._slots.slots
