"""The Ray executor's ledger of attempts across control-plane restarts: an exit the hub
reported is kept until the pass that recorded it committed, so a control plane killed in
between hands it to the next one. The end-to-end restart scenarios, on both executors, are
in test_parity_restart."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import ray

from sylphx._server.executors.base import LaunchRequest
from sylphx._server.executors.ray.attempts import Ledger, outcome_exit
from sylphx._server.executors.ray.executor import RayExecutor

pytestmark = pytest.mark.slow


def test_an_exit_is_kept_in_the_hub_until_the_pass_after_the_one_that_reported_it() -> None:
    """The ledger alone (no cluster): a reported exit is forgotten by the hub only at the
    next poll; a failed pass's recover() in between adopts it again, and it is reported
    once more (settling ignores an exit already recorded: one usage row)."""
    ledger = Ledger()
    result = ("result", 9.0, (0, None, [], 1.0, 2.0))  # seen by the hub at 9; ran 1 -> 2
    ledger.note([("gone", "run1", 1.0, result), ("runs", None, 3.0, None)])  # a restart
    assert ledger.adopt("gone", hub_is_new=False) == (True, "run1")  # ended meanwhile
    assert ledger.adopt("runs", hub_is_new=False) == (True, None)  # still running
    assert [h for h, _ in ledger.take_starts()] == ["runs"]
    ack, ended, ready = ledger.take()
    assert ack == [] and ready == [] and [h for h, _ in ended] == ["gone"]
    exit = outcome_exit("gone", ended[0][1], lambda: None)
    assert (exit.returncode, exit.started_at, exit.ended_at) == (
        0,
        datetime.fromtimestamp(1.0, UTC),
        datetime.fromtimestamp(2.0, UTC),  # the node's end, not when anyone looked
    )
    ledger.now_reported([exit])
    assert ledger.adopt("gone", hub_is_new=False) == (True, None)  # its pass failed
    assert ledger.handed_over("gone")  # not launched again
    ack, ended, ready = ledger.take()
    assert ack == [] and ended == [] and ready == [exit]
    ledger.now_reported(ready)
    assert ledger.take()[0] == ["gone"]  # that pass committed: the hub may forget it
    ledger.now_reported([])
    # never reached the hub: launched again (adopted, not handed over) -- unless the hub
    # is new, for then the old one died with its tasks: lost
    assert ledger.adopt("unflushed", hub_is_new=False) == (True, None)
    assert not ledger.handed_over("unflushed")
    assert ledger.adopt("lost", hub_is_new=True) == (False, None)


def test_a_start_taken_by_a_pass_that_was_rolled_back_is_taken_again() -> None:
    """The ledger alone: a start reported to a pass that then failed is reported to the
    next one (else the attempt stayed ``starting``: never timed out, never metered live);
    once a pass that took it committed, never again."""
    ledger = Ledger()
    ledger.handing(["a"])
    ledger.note([("a", None, 5.0, None)])
    at = datetime.fromtimestamp(5.0, UTC)
    assert ledger.take_starts() == [("a", at)]
    ledger.starts_settled(committed=False)
    assert ledger.take_starts() == [("a", at)]
    ledger.starts_settled(committed=True)
    assert ledger.take_starts() == []
    ledger.starts_settled(committed=False)
    assert ledger.take_starts() == []


def test_an_exit_taken_by_a_control_plane_killed_before_its_pass_committed_is_not_lost(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """A control plane that took an exit from the hub and died before storing it: the next
    one on the home is handed the same exit (true window and all), and the hub forgets it
    only once a later poll shows the pass that recorded it committed."""
    home, logs = tmp_path / "home", tmp_path / "logs"
    opts: dict[str, Any] = dict(home=home, sandbox=False, enforce_tiers=False)
    first = RayExecutor(ray_cluster.address, **opts)
    request = LaunchRequest(
        "run1", 0, 1, 1, True, ["sh", "-c", "echo hi"], {}, "nano",
        f"{logs}/out", f"{logs}/err", None,
    )  # fmt: skip
    handle = first.launch(request)
    first.flush()
    deadline = time.monotonic() + 60
    while not (exits := first.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first._closed.set()  # killed: nothing stored, nothing closed
    first._watcher.join()
    first._nodes.close()
    second = RayExecutor(ray_cluster.address, **opts)
    try:
        assert second.adopt(handle) and second.started(handle)
        assert second.poll() == exits and exits[0].returncode == 0
        # stored, but never handed over (killed between its commit and the flush): adopted
        # to be launched again, not lost
        assert second.adopt("ray:run1:1:1") and not second.started("ray:run1:1:1")
        assert second.poll() == []  # that pass committed: the hub forgets the exit
        assert (logs / "out").read_text() == "hi\n"
    finally:
        second.close()
    assert f"sylphx-hub-{(home / 'ray.id').read_text().strip()}" not in (
        ray.util.list_named_actors()
    )  # holding nothing, the hub went with the control plane


def test_a_kill_asked_while_the_hub_takes_the_attempt_over_is_not_lost(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """The hand-off to the hub is not waited for (a pass goes on while the hub submits
    the wave), and the hub answers calls on many threads: a kill asked at once, before
    the hub has the attempt, must not overtake the hand-off and find nothing to stop. It
    goes out once the hub has it, and the attempt ends killed, long before its 30 s."""
    logs = tmp_path / "logs"
    executor = RayExecutor(
        ray_cluster.address, home=tmp_path / "home", sandbox=False, enforce_tiers=False
    )
    try:
        request = LaunchRequest(
            "run1", 0, 1, 1, True, ["sleep", "30"], {}, "nano",
            f"{logs}/out", f"{logs}/err", None,
        )  # fmt: skip
        handle = executor.launch(request)
        executor.flush()
        executor.signal(handle, "kill")  # the hub's answer to the hand-off not yet in
        deadline = time.monotonic() + 20
        while not (exits := executor.poll()):
            assert time.monotonic() < deadline, "the kill was lost: the shard ran on"
            time.sleep(0.05)
        assert [e.handle for e in exits] == [handle] and exits[0].returncode != 0
    finally:
        executor.close()
