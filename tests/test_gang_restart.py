"""A gang is all-or-nothing for its whole life (#19 item 2), on the local executor with
real supervisors and shards: when a member is lost (here its supervisor is killed with
SIGKILL), every sibling is stopped and the gang is admitted again as one unit. The loss
is a preemption on every index, never the failure budget."""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path

import pytest

from conftest import Server
from sylphx._server.executors.local import supervisors

# The first attempt of every shard sleeps (until the gang is stopped); the next succeeds.
SCRIPT = 'if [ "$SYLPHX_SHARD_ATTEMPT" = 1 ]; then exec sleep 120; fi; exit 0'


def _owners(state_dir: Path, run_id: str) -> dict[str, int]:
    """Each started attempt of the run (``I.N``) with the pid of the supervisor that
    claimed it."""
    owners = {}
    for claim in (state_dir / run_id).glob("*/claim"):
        text = claim.read_text().split()
        if text and text[0].isdigit():
            owners[claim.parent.name] = int(text[0])
    return owners


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_gang_that_loses_a_member_is_stopped_and_admitted_again_whole(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two supervisors for the gang's batch (one per CPU; a real batch splits past 64
    # shards): the one killed below takes its shards with it, the other's are siblings.
    monkeypatch.setattr(supervisors, "SHARDS_PER_SUPERVISOR", 2)
    run = server.submit(
        command=["sh", "-c", SCRIPT],
        parallelism=4,
        machine="nano",
        gangScheduling=True,  # no retry budget: a loss that used it would fail the run
    )
    state_dir = server.plane.executor.state_dir  # type: ignore[attr-defined]
    server.wait_for(lambda: len(_owners(state_dir, run["id"])) == 4)
    server.wait_for(lambda: server.get(run["id"])["aggregate"]["running"] == 4)
    owners = _owners(state_dir, run["id"])
    victim = min(owners.values())
    lost = {name.split(".")[0] for name, pid in owners.items() if pid == victim}
    assert 0 < len(lost) < 4, owners
    os.kill(victim, signal.SIGKILL)

    done = server.wait(run["id"], timeout=90)
    assert done["status"] == "succeeded", done
    shards = server.shards(run["id"])
    for shard in shards:
        first, second = shard["history"]
        assert (shard["attempts"], shard["preemptions"]) == (2, 1), shard
        assert first["status"] == "preempted" and second["status"] == "succeeded", shard
        if str(shard["index"]) in lost:
            assert first["reason"].startswith("Lost: the attempt's supervisor died"), shard
        else:
            assert first["reason"].startswith("GangRestart: a shard of its gang was lost"), shard
    # Never run short of a peer: the gang started again only once every member had ended.
    restarted = min(_at(s["history"][1]["startedAt"]) for s in shards)
    assert restarted >= max(_at(s["history"][0]["endedAt"]) for s in shards)
    assert done["aggregate"]["succeeded"] == 4
