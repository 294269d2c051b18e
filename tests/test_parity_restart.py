"""Parity under a control-plane restart (issue #19 items 5 and 7): ``kill -9`` (or a
graceful SIGTERM) of the control plane mid-run, started again on the same home, re-adopts
every running shard on either executor -- nothing rerun, complete logs (shipped before,
while it was down and after), one usage row per attempt, billing as the shards measured
themselves. Local: the shards' supervisors outlive the plane; Ray: the detached hub and its
tasks do.

The control plane is a real subprocess (``serverproc``): on Ray this test process is the
session cluster's driver, and a Ray driver can only be killed as a whole process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.util.placement_group import placement_group_table
from sqlalchemy import func, select

from serverproc import ServerProcess
from sylphx._server.store import AttemptRow, UsageRow, make_engine
from test_parity import kind_fixture  # noqa: F401

pytestmark = pytest.mark.slow

# Shard i prints "tick k <epoch>" every ~0.5 s, TICKS(i) times, and writes down in its
# volume when it started and ended, once per attempt that ran to its end.
SCRIPT = (
    "i=$SYLPHX_SHARD_INDEX; n=$((BASE + STEP * i)); t0=$(date +%s.%N); k=0;"
    ' while [ $k -lt $n ]; do echo "tick $k $(date +%s.%N)"; sleep 0.5; k=$((k + 1)); done;'
    ' echo "$SYLPHX_SHARD_ATTEMPT $t0 $(date +%s.%N)" >> /m/ran-$i'
)


@pytest.fixture
def proc(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A control plane subprocess: local with 6 vCPU (as the Ray cluster's 3 nodes of 2),
    or on the session's Ray cluster."""
    if kind == "ray":
        cluster: Any = request.getfixturevalue("ray_cluster")
        env = {"SYLPHX_EXECUTOR": "ray", "SYLPHX_RAY_ADDRESS": cluster.address}
    else:
        env = {"SYLPHX_LOCAL_CPUS": "6"}
    server = ServerProcess(tmp_path / "home", **env)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _submit(server: ServerProcess, n: int, *, base: int, step: int, gang: bool) -> tuple[str, Path]:
    vol = server.http.post("/v1/volumes", json={"name": "marks"}).json()
    run = server.submit(
        command=["sh", "-c", SCRIPT],
        parallelism=n,
        machine="standard",
        gangScheduling=gang,
        env={"BASE": str(base), "STEP": str(step)},
        volumeMounts=[{"volumeId": vol["id"], "mountPath": "/m"}],
    )
    return run["id"], server.home / "volumes" / vol["id"]


def _wait_running(server: ServerProcess, run_id: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = server.http.get(f"/v1/runs/{run_id}/shards").json()
        if sum(s["status"] == "running" for s in shards) == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"not all {n} shards running: {shards}")


def _restart(server: ServerProcess, how: str, down: float) -> tuple[float, float]:
    """Stop the control plane (``kill -9`` or SIGTERM), leave it down ``down`` seconds,
    start it again on the same home; returns when it went down and when it was back."""
    if how == "kill9":
        server.kill9()
    else:
        assert server.term() == 0
    gone = time.time()
    time.sleep(down)
    server.start()
    return gone, time.time()


def _check(server: ServerProcess, run_id: str, marks: Path, n: int, ticks: list[int]) -> None:
    """Succeeded, nothing rerun, complete logs, one usage row per attempt, billed as the
    shards measured themselves."""
    done = server.wait(run_id, timeout=120)
    assert done["status"] == "succeeded", done
    shards = server.http.get(f"/v1/runs/{run_id}/shards").json()
    ran = 0.0
    for shard in shards:
        i = shard["index"]
        lines = (marks / f"ran-{i}").read_text().splitlines()
        assert shard["attempts"] == 1 and len(lines) == 1, (i, lines, shard)  # exactly once
        assert shard["preemptions"] == 0, shard
        attempt, t0, t1 = lines[0].split()
        (hist,) = shard["history"]
        assert attempt == "1" and hist["status"] == "succeeded", hist
        # the recorded window is the process's own, even for one that ended while no
        # control plane watched (its end is the node's, not the restart's)
        assert 0 <= float(t0) - _ts(hist["startedAt"]) < 1.0, (i, hist, t0)
        assert 0 <= _ts(hist["endedAt"]) - float(t1) < 1.0, (i, hist, t1)
        ran += float(t1) - float(t0)
        log = server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": i}).text
        got = [line.split()[1] for line in log.splitlines()]
        assert got == [str(k) for k in range(ticks[i])], (i, log)
    billed = done["computeSeconds"]  # standard: 1 compute-second per second
    assert abs(billed - ran) <= 0.05 * ran, (billed, ran)
    engine = make_engine(server.env["SYLPHX_DATABASE_URL"])
    try:
        with engine.connect() as db:
            attempts = db.scalar(
                select(func.count()).select_from(AttemptRow).where(AttemptRow.run_id == run_id)
            )
            rows = db.execute(
                select(UsageRow.attempt_id, func.count())
                .where(UsageRow.run_id == run_id)
                .group_by(UsageRow.attempt_id)
            ).all()
    finally:
        engine.dispose()
    assert attempts == n and len(rows) == n and all(count == 1 for _, count in rows), rows


def _phases(server: ServerProcess, run_id: str, i: int, gone: float, back: float) -> list[int]:
    """How many of shard ``i``'s lines it wrote before the control plane went, while it was
    down, and after it was back."""
    log = server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": i}).text
    stamps = [float(line.split()[2]) for line in log.splitlines()]
    return [
        sum(t < gone for t in stamps),
        sum(gone <= t < back for t in stamps),
        sum(t >= back for t in stamps),
    ]


def _hub_gone(server: ServerProcess) -> bool:
    name = f"sylphx-hub-{(server.home / 'ray.id').read_text().strip()}"
    return name not in ray.util.list_named_actors()


def test_kill_9_mid_run_re_adopts_every_shard(kind: str, proc: ServerProcess) -> None:
    # 6 x standard: all at once; 4 s to 11.5 s each. The control plane is killed 1 s after
    # all started and down >= 3 s: shard 0 ends meanwhile.
    ticks = [8 + 3 * i for i in range(6)]
    run_id, marks = _submit(proc, 6, base=8, step=3, gang=False)
    _wait_running(proc, run_id, 6)
    time.sleep(1)
    gone, back = _restart(proc, "kill9", down=3)
    _check(proc, run_id, marks, 6, ticks)
    for i in (4, 5):  # the longest: logs shipped before, during and after the restart
        assert all(_phases(proc, run_id, i, gone, back)), _phases(proc, run_id, i, gone, back)
    assert proc.term() == 0
    if kind == "ray":
        assert _hub_gone(proc)  # nothing left to watch: the hub goes with the plane


@pytest.mark.parametrize("how", ["kill9", "term"])
def test_a_gang_runs_on_across_a_restart(kind: str, proc: ServerProcess, how: str) -> None:
    # 3 x ~10 s (long enough that a sandbox's start, billed too, stays far below 5%)
    run_id, marks = _submit(proc, 3, base=20, step=0, gang=True)
    _wait_running(proc, run_id, 3)

    def group() -> dict[str, Any] | None:
        found = [g for g in placement_group_table().values() if g["name"] == f"sylphx-{run_id}"]
        return found[0] if found else None

    pg = group() if kind == "ray" else None
    assert kind == "local" or (pg is not None and pg["state"] == "CREATED")
    time.sleep(1)  # some of their output shipped before the control plane goes
    gone, back = _restart(proc, how, down=2)
    _check(proc, run_id, marks, 3, [20] * 3)
    if pg is not None:  # the same placement group held the gang throughout, and is released
        after = group()
        assert after is not None and after["placement_group_id"] == pg["placement_group_id"]
        deadline = time.monotonic() + 10
        while (after := group()) is not None and after["state"] != "REMOVED":
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
    assert all(_phases(proc, run_id, 0, gone, back))
    assert proc.term() == 0
    if kind == "ray":
        assert _hub_gone(proc)


def test_kill_9_during_a_merge_runs_it_once(kind: str, proc: ServerProcess) -> None:
    vol = proc.http.post("/v1/volumes", json={"name": "marks"}).json()
    marks = proc.home / "volumes" / vol["id"]
    step = "echo start >> /m/merge-runs; sleep 4; echo done >> /m/merge-runs; echo merged"
    run = proc.submit(
        command=["sh", "-c", "echo $SYLPHX_SHARD_INDEX > /m/part-$SYLPHX_SHARD_INDEX"],
        parallelism=2,
        machine="nano",
        volumeMounts=[{"volumeId": vol["id"], "mountPath": "/m"}],
        merge={"command": ["sh", "-c", step]},
    )
    run_id = run["id"]
    deadline = time.monotonic() + 60
    while proc.http.get(f"/v1/runs/{run_id}").json()["merge"]["status"] != "running":
        assert time.monotonic() < deadline, proc.http.get(f"/v1/runs/{run_id}").json()
        time.sleep(0.05)
    time.sleep(0.5)
    _restart(proc, "kill9", down=2)
    done = proc.wait(run_id, timeout=120)
    assert done["status"] == "succeeded" and done["merge"]["attempts"] == 1, done
    assert (marks / "merge-runs").read_text() == "start\ndone\n"  # once, to its end
    log = proc.http.get(f"/v1/runs/{run_id}/logs", params={"merge": "true"}).text
    assert log == "merged\n"
    engine = make_engine(proc.env["SYLPHX_DATABASE_URL"])
    try:
        with engine.connect() as db:
            rows = db.execute(select(UsageRow.machine).where(UsageRow.run_id == run_id)).all()
    finally:
        engine.dispose()
    assert len(rows) == 3  # one per attempt: two shards and the merge
    assert proc.term() == 0
