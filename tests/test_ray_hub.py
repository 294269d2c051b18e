"""The hub (``LogHub``) as a plain object, without a cluster: the order it delivers
signals in, and which gang members it ends as lost when nodes leave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sylphx._server.executors.ray import attempts as ray_attempts
from sylphx._server.executors.ray import hub as ray_hub
from sylphx._server.executors.ray.hub import LogHub, _Attempt, _Gang


class Task:
    """Stands for an attempt's Ray task (an ObjectRef)."""

    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture
def cancelled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The tasks the hub cancels (``ray.cancel``, also through ``gang.cancel``)."""
    seen: list[Any] = []
    monkeypatch.setattr(ray_hub.ray, "cancel", lambda ref, force=False: seen.append(ref))
    return seen


def drain(hub: LogHub, handle: str, tmp_path: Path, n: int = 4) -> list[str | None]:
    """What the shard gets in reply to its next ``n`` log chunks."""
    paths = (str(tmp_path / "out"), str(tmp_path / "err"))
    return [hub.push(handle, "node-a", paths, b"", b"") for _ in range(n)]


def test_a_kill_asked_before_the_term_went_out_is_delivered_after_it(
    tmp_path: Path, cancelled: list[Any]
) -> None:
    hub, task = LogHub(), Task("t")
    hub._attempts["h"] = _Attempt(gang=None, ref=task, started=1.0)
    hub.signal("h", "term")
    hub.signal("h", "kill")  # before the shard's next chunk
    assert cancelled == []  # a cancel now would kill it before its term
    assert drain(hub, "h", tmp_path, 1) == ["term"]
    assert cancelled == []
    assert drain(hub, "h", tmp_path) == ["kill", None, None, None]
    assert cancelled == [task]  # with the kill, not before


def test_each_signal_goes_out_once_and_a_weaker_one_later_is_dropped(
    tmp_path: Path, cancelled: list[Any]
) -> None:
    hub, task = LogHub(), Task("t")
    hub._attempts["h"] = _Attempt(gang=None, ref=task, started=1.0)
    hub.signal("h", "term")
    hub.signal("h", "term")
    assert drain(hub, "h", tmp_path) == ["term", None, None, None]
    hub.signal("h", "kill")  # the term went out: the kill and its cancel go at once
    assert cancelled == [task]
    hub.signal("h", "term")
    assert drain(hub, "h", tmp_path) == ["kill", None, None, None]


def test_a_kill_of_an_attempt_not_started_cancels_its_task_at_once(
    tmp_path: Path, cancelled: list[Any]
) -> None:
    hub, task = LogHub(), Task("t")
    hub._attempts["h"] = _Attempt(gang=None, ref=task)
    hub.signal("h", "term")
    hub.signal("h", "kill")
    assert cancelled == [task]  # still waiting in Ray's queue: ends at once
    assert drain(hub, "h", tmp_path, 3) == ["term", "kill", None]  # in order, if it starts


def _gang_hub() -> tuple[LogHub, dict[str, Task]]:
    """A gang of three: ``a`` and ``b`` not started, their bundles on nodes n1 and n2;
    ``c`` running on n1."""
    hub = LogHub()
    hub._gangs["run"] = _Gang(pg=object(), size=3, machine="standard", launched=3)
    tasks = {h: Task(h) for h in "abc"}
    hub._attempts["a"] = _Attempt(gang="run", ref=tasks["a"], placed="n1")
    hub._attempts["b"] = _Attempt(gang="run", ref=tasks["b"], placed="n2")
    hub._attempts["c"] = _Attempt(gang="run", ref=tasks["c"], placed="n1", started=1.0)
    hub._attempts["solo"] = _Attempt(gang=None, ref=Task("solo"))
    return hub, tasks


def test_a_gang_member_not_started_on_a_node_that_left_is_lost_and_cancelled(
    cancelled: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, tasks = _gang_hub()
    assert hub.nodes_left(["n1"]) == ["a"]  # c started: Ray reports its own loss
    assert cancelled == [tasks["a"]]
    _, changes = hub.changes(0, 0)
    assert [(h, gang, started) for h, gang, started, _ in changes] == [("a", "run", None)]
    outcome = changes[0][3]
    assert outcome is not None and outcome[0] == "lost"
    monkeypatch.setattr(ray_attempts.ray, "nodes", lambda: [{"NodeID": "n2", "Alive": True}])
    exit = ray_attempts.outcome_exit("a", outcome, lambda: None)
    assert exit.lost and exit.reason is not None
    assert exit.reason.startswith("NodeLost: node n1 died")
    # the task's own end (cancelled) comes later: the loss stays
    hub._finish("a", ("cancelled", 2.0))
    assert hub._attempts["a"].outcome == outcome
    assert hub.nodes_left(["n1"]) == []  # once


def test_a_gang_member_ray_re_placed_on_another_node_is_lost_when_it_starts(
    cancelled: list[Any],
) -> None:
    hub, tasks = _gang_hub()
    hub.started("b", "n2", 5.0)  # where its bundle was: running
    assert hub._attempts["b"].started == 5.0 and hub._attempts["b"].outcome is None
    hub.started("a", "n3", 6.0)  # its bundle's node died and Ray moved it: late, alone
    a = hub._attempts["a"]
    assert a.started is None and a.outcome is not None and a.outcome[0] == "lost"
    assert a.outcome[4] == "n1" and cancelled == [tasks["a"]]


def test_where_the_bundle_is_unknown_a_rescheduling_group_loses_its_unstarted(
    cancelled: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _ = _gang_hub()
    for attempt in hub._attempts.values():
        attempt.placed = None
    monkeypatch.setattr(ray_hub, "placement_state", lambda pg: "CREATED")
    assert hub.nodes_left(["n9"]) == []
    monkeypatch.setattr(ray_hub, "placement_state", lambda pg: "RESCHEDULING")
    assert sorted(hub.nodes_left(["n9"])) == ["a", "b"]
    assert sorted(t.name for t in cancelled) == ["a", "b"]
