"""Parity of the two executors under faults (issue #19 item 7): opportunistic shards
preempted by a gang; a lost attempt (local: its supervisor killed with SIGKILL; Ray: a real
raylet removed from the loopback cluster without a drain) is a preemption, retried without
the failure budget, and a gang that loses a member is stopped and admitted again whole.
A control plane killed mid-run is in test_parity_restart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from conftest import RAY_NODE, Server
from sylphx._server.executors.local import supervisors
from test_parity import WAIT, at, billed, kind_fixture, outcome, sh, start_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def vcpus(server: Server) -> int:
    return server.plane.executor.capacity().millicpu // 1000


def test_a_gang_preempts_opportunistic_shards_which_retry_without_budget(
    start: Callable[..., Server],
) -> None:
    server = start()
    vol, out = server.volume()
    slots = vcpus(server)  # local 2, Ray 6: the opportunistic run fills the capacity
    opp = server.submit(
        command=sh(
            "trap 'echo checkpoint; exit 143' TERM; touch /o/$SYLPHX_SHARD_INDEX;"
            ' [ "$SYLPHX_SHARD_ATTEMPT" -gt 1 ] && exit 0; sleep 6 & wait'
        ),
        parallelism=slots,
        machine="standard",
        gangScheduling=False,
        backoffLimitPerIndex=0,  # a preemption that used the budget would fail its shard
        volumeMounts=[{"volumeId": vol, "mountPath": "/o"}],
    )
    server.wait_for(lambda: len(list(out.iterdir())) == slots, timeout=60)  # traps set
    gang = server.submit(command=["sleep", "0.5"], parallelism=2, machine="standard")
    assert server.wait(gang["id"], timeout=WAIT)["status"] == "succeeded"
    done = server.wait(opp["id"], timeout=WAIT)
    assert done["status"] == "succeeded", done
    got = outcome(server, opp["id"])
    ok = ("succeeded", 0, "Completed")
    preempted = [i for i, _, history in got if len(history) > 1]
    assert len(preempted) == 2, got  # just the room the gang needed
    for i, status, history in got:
        expected = [("preempted", 143, "Preempted"), ok] if i in preempted else [ok]
        assert (status, history) == ("succeeded", expected), got
        if i in preempted:  # SIGTERM first: the shard could checkpoint
            assert logs_of(server, opp["id"], i, attempt=1) == "checkpoint\n"
    assert [s["preemptions"] for s in server.shards(opp["id"])] == [
        int(i in preempted) for i in range(slots)
    ]
    walls = billed(server, opp["id"])
    assert all(walls[i, 1] > 0 for i in preempted)  # recorded (and not billed: see billed())


def logs_of(server: Server, run_id: str, shard: int, **params: Any) -> str:
    params = {"shard": shard, **params}
    return server.http.get(f"/v1/runs/{run_id}/logs", params=params).text


# -- losing a member mid-run ------------------------------------------------------------------
LOSS = {"local": "Lost", "ray": "NodeLost"}  # the reason's kind, per cause


def _claims(server: Server, run_id: str) -> dict[int, int]:
    """Each started attempt's shard index -> pid of the supervisor that claimed it."""
    state_dir: Path = server.plane.executor.state_dir  # type: ignore[attr-defined]
    owners = {}
    for claim in (state_dir / run_id).glob("*/claim"):
        text = claim.read_text().split()
        if text and text[0].isdigit():
            owners[int(claim.parent.name.split(".")[0])] = int(text[0])
    return owners


def _cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]


@pytest.fixture
def lose(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Server, str], set[int] | None]]:
    """``lose(server, run_id)`` loses part of a running run of 4 large shards: local kills
    one of its two supervisors (SIGKILL) and returns the indices it held; Ray removes, with
    no drain, a fourth node added for the test (each large shard fills a node: one of the 4
    was there) and adds a fresh one so a gang of 4 fits again; returns None."""
    monkeypatch.setattr(supervisors, "SHARDS_PER_SUPERVISOR", 2)  # 2 supervisors, 2 each
    added: list[Any] = []
    cluster: Any = request.getfixturevalue("ray_cluster") if kind == "ray" else None
    base = _cpus() if cluster is not None else 0

    def add() -> None:
        added.append(cluster.add_node(**RAY_NODE, node_ip_address="127.0.0.1", num_gpus=0))
        cluster.wait_for_nodes()

    def lose(server: Server, run_id: str) -> set[int] | None:
        if cluster is None:
            server.wait_for(lambda: len(_claims(server, run_id)) == 4, timeout=60)
            owners = _claims(server, run_id)
            victim = min(owners.values())
            os.kill(victim, signal.SIGKILL)
            return {i for i, pid in owners.items() if pid == victim}
        cluster.remove_node(added.pop(), allow_graceful=False)
        add()
        return None

    if cluster is not None:
        add()
    try:
        yield lose
    finally:
        for node in added:  # the replacement, idle: drained, so Ray drops it at once
            cluster.remove_node(node, allow_graceful=True)
        while cluster is not None and _cpus() != base:
            time.sleep(0.1)  # the next test sees the session's 3 nodes again


def _run_losing_a_member(
    start: Callable[..., Server],
    lose: Callable[[Server, str], set[int] | None],
    kind: str,
    *,
    gang: bool,
) -> tuple[Server, str, set[int]]:
    """4 large shards whose first attempts sleep (gang: until stopped), the retries succeed;
    a member is lost once all 4 run. Returns the server, the run and the lost indices."""
    # local: room for the 4 large shards, as on the 4 Ray nodes of 2 vCPU / 4 GiB
    server = start(local_cpus=8, local_memory=16 << 30)
    first = "exec sleep 120" if gang else "exec sleep 6"
    run = server.submit(
        command=sh(
            f'echo "try $SYLPHX_SHARD_ATTEMPT"; [ "$SYLPHX_SHARD_ATTEMPT" = 1 ] && {first}; exit 0'
        ),
        parallelism=4,
        machine="large",
        gangScheduling=gang,
        **({} if gang else {"backoffLimitPerIndex": 0}),  # a loss must not use the budget
    )

    def running() -> bool:  # every process started (Ray: its node said so)
        return [s["status"] for s in server.shards(run["id"])] == ["running"] * 4

    server.wait_for(running, timeout=60)
    lost = lose(server, run["id"])
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "succeeded", (done, outcome(server, run["id"]))
    shards = server.shards(run["id"])
    reasons = {s["index"]: (s["history"][0]["reason"] or "") for s in shards}
    by_loss = {i for i, why in reasons.items() if why.startswith(f"{LOSS[kind]}: ")}
    if lost is None:  # Ray: each large shard fills a node, so the node held exactly one
        assert len(by_loss) == 1, reasons
    else:
        assert by_loss == lost and 0 < len(lost) < 4, reasons
    for i in range(4):  # every attempt wrote to its own log
        assert logs_of(server, run["id"], i) == f"try {len(shards[i]['history'])}\n"
    return server, run["id"], by_loss


def test_a_lost_opportunistic_shard_is_preempted_and_retried_without_budget(
    start: Callable[..., Server], lose: Callable[[Server, str], set[int] | None], kind: str
) -> None:
    server, run_id, lost = _run_losing_a_member(start, lose, kind, gang=False)
    ok = ("succeeded", 0, "Completed")
    got = outcome(server, run_id)
    for i, status, history in got:
        expected = [("preempted", 137, LOSS[kind]), ok] if i in lost else [ok]
        assert (status, history) == ("succeeded", expected), got
    assert [s["preemptions"] for s in server.shards(run_id)] == [int(i in lost) for i in range(4)]
    walls = billed(server, run_id)  # a lost window ends at the loss, long before 6 s
    assert all((walls[i, 1] < 6) == (i in lost) for i in range(4)), walls


def test_a_gang_that_loses_a_member_is_stopped_and_admitted_again_whole(
    start: Callable[..., Server], lose: Callable[[Server, str], set[int] | None], kind: str
) -> None:
    server, run_id, lost = _run_losing_a_member(start, lose, kind, gang=True)
    ok = ("succeeded", 0, "Completed")
    got = outcome(server, run_id)
    for i, status, history in got:
        first = ("preempted", 137, LOSS[kind]) if i in lost else ("preempted", 143, "GangRestart")
        assert (status, history) == ("succeeded", [first, ok]), got
    shards = server.shards(run_id)
    assert [(s["attempts"], s["preemptions"]) for s in shards] == [(2, 1)] * 4
    # never short of a peer: started again only once every member of the first had ended
    restarted = min(at(s["history"][1]["startedAt"]) for s in shards)
    assert restarted >= max(at(s["history"][0]["endedAt"]) for s in shards)
    assert all(w < 60 for w in billed(server, run_id).values())  # never the 120 s sleep
