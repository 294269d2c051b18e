"""The scheduler with real processes: preemption, no starvation, admission deadlines,
queue visibility."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import Server


@pytest.fixture
def sched(make_server) -> Server:  # type: ignore[no-untyped-def]
    """2 vCPU of capacity, a 1 s preemption grace."""
    return make_server(preemption_grace_seconds=1.0)  # type: ignore[no-any-return]


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_gang_preempts_opportunistic_shards_that_finish_later_with_budget_untouched(
    sched: Server, tmp_path: Path
) -> None:
    vol, out = sched.volume()
    log = out / "log"
    opp = sched.submit(
        command=[
            "sh",
            "-c",
            "trap 'echo \"checkpoint $SYLPHX_SHARD_INDEX\" >> /out/log; exit 143' TERM;"
            ' echo "start $SYLPHX_SHARD_INDEX $SYLPHX_SHARD_ATTEMPT" >> /out/log;'
            ' [ "$SYLPHX_SHARD_ATTEMPT" -gt 1 ] && exit 0; sleep 30 & wait',
        ],
        volumeMounts=[{"volumeId": vol, "mountPath": "/out"}],
        parallelism=2,
        machine="standard",
        gangScheduling=False,
        backoffLimitPerIndex=0,
    )
    # both shards have set their SIGTERM trap once they have logged "start"
    sched.wait_for(lambda: log.exists() and log.read_text().count("start") == 2)
    gang = sched.submit(command=["sleep", "0.5"], parallelism=2, machine="standard")
    assert sched.wait(gang["id"])["status"] == "succeeded"
    done = sched.wait(opp["id"])
    assert done["status"] == "succeeded"
    shards = sched.shards(opp["id"])
    for shard in shards:
        assert (shard["preemptions"], shard["attempts"]) == (1, 2)
        assert [a["status"] for a in shard["history"]] == ["preempted", "succeeded"]
        assert shard["history"][0]["reason"].startswith("Preempted")
    lines = log.read_text().splitlines()
    assert sorted(line for line in lines if line.startswith("checkpoint")) == [
        "checkpoint 0",
        "checkpoint 1",
    ]  # SIGTERM first: shards could checkpoint
    # the preempted windows are recorded, not billed (#21): the run bills its second attempts
    windows = {
        (s["index"], a["status"]): (at(a["endedAt"]) - at(a["startedAt"])).total_seconds()
        for s in shards
        for a in s["history"]
    }
    billed = sum(w for (_, status), w in windows.items() if status == "succeeded")
    unbilled = sum(w for (_, status), w in windows.items() if status == "preempted")
    assert done["computeSeconds"] == pytest.approx(billed, abs=0.01), (done, windows)
    usage = sched.http.get("/v1/usage").json()
    row = next(r for r in usage["byRun"] if r["runId"] == opp["id"])
    assert row["unbilledSeconds"] == pytest.approx(unbilled, abs=0.01) and unbilled > 0
    assert usage["unbilledSeconds"] == pytest.approx(unbilled, abs=0.01)
    get = subprocess.run(
        [sys.executable, "-m", "sylphx", "runs", "get", opp["id"]],
        env={**os.environ, "SYLPHX_URL": sched.url, "SYLPHX_TOKEN": sched.token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "PREEMPTED" in get.stdout


def test_a_waiting_gang_is_not_starved_by_a_stream_of_small_runs(
    sched: Server, tmp_path: Path
) -> None:
    vol, out = sched.volume()
    starts = out / "starts"
    record = ["sh", "-c", 'echo "$RUN" >> /out/starts; sleep 0.3']
    mount = [{"volumeId": vol, "mountPath": "/out"}]
    blocker = sched.submit(command=["sleep", "60"], machine="standard")  # ends when cancelled
    sched.wait_for(lambda: sched.get(blocker["id"])["status"] == "running")
    big = sched.submit(
        command=record, parallelism=2, machine="standard", env={"RUN": "big"}, volumeMounts=mount
    )
    small = [
        sched.submit(command=record, machine="nano", env={"RUN": f"small{i}"}, volumeMounts=mount)
        for i in range(3)
    ]
    view = sched.get(small[2]["id"])
    sched.wait_for(lambda: sched.get(small[2]["id"])["queuePosition"] == 4)
    assert "holds the head of the queue" in sched.get(small[2]["id"])["message"]
    sched.http.post(f"/v1/runs/{blocker['id']}/cancel")
    for run in [big, *small]:
        assert sched.wait(run["id"])["status"] == "succeeded"
    order = starts.read_text().split()
    assert order[:2] == ["big", "big"], order  # the 0.9 free vCPU were kept for it
    assert view["status"] == "queued"


def test_admission_deadline_both_ways(sched: Server) -> None:
    blocker = sched.submit(command=["sleep", "60"], parallelism=2, machine="standard")
    sched.wait_for(lambda: sched.get(blocker["id"])["status"] == "running")
    ends = sched.submit(command=["true"], parallelism=2, machine="nano", admissionTimeoutSeconds=1)
    carries_on = sched.submit(  # the same deadline, run out at the same time
        command=["true"],
        parallelism=2,
        machine="nano",
        admissionTimeoutSeconds=1,
        admissionFallback="opportunistic",
    )
    done = sched.wait(ends["id"], timeout=20)
    assert done["status"] == "failed" and done["computeSeconds"] == 0
    assert done["message"].startswith("AdmissionTimeout")
    sched.wait_for(
        lambda: sched.get(carries_on["id"])["spec"]["gangScheduling"] is False, timeout=20
    )
    sched.http.post(f"/v1/runs/{blocker['id']}/cancel")
    assert sched.wait(carries_on["id"])["status"] == "succeeded"
