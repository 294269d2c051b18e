"""Ray shards outlive their control plane: ``kill -9`` (or a graceful restart) of the
control plane mid-run, started again on the same home, re-adopts them -- nothing rerun,
complete logs, one usage row per attempt, billing as the shards measured themselves.

The control plane is a real subprocess (``serverproc``): this test process is the session
cluster's driver, and a Ray driver can only be killed as a whole process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.util.placement_group import placement_group_table
from sqlalchemy import func, select

from serverproc import ServerProcess
from sylphx._server.executors.base import LaunchRequest
from sylphx._server.executors.ray.attempts import Ledger, outcome_exit
from sylphx._server.executors.ray.executor import RayExecutor
from sylphx._server.store import AttemptRow, UsageRow, make_engine

pytestmark = pytest.mark.slow

# Shard i prints "tick k <epoch>" every ~0.5 s, TICKS(i) times, and writes down in its
# volume when it started and ended, once per attempt that ran to its end.
SCRIPT = (
    "i=$SYLPHX_SHARD_INDEX; n=$((BASE + STEP * i)); t0=$(date +%s.%N); k=0;"
    ' while [ $k -lt $n ]; do echo "tick $k $(date +%s.%N)"; sleep 0.5; k=$((k + 1)); done;'
    ' echo "$SYLPHX_SHARD_ATTEMPT $t0 $(date +%s.%N)" >> /m/ran-$i'
)


@pytest.fixture
def ray_proc(tmp_path: Path, ray_cluster: Any) -> Iterator[ServerProcess]:
    """A control plane subprocess on the session's Ray cluster."""
    server = ServerProcess(
        tmp_path / "home", SYLPHX_EXECUTOR="ray", SYLPHX_RAY_ADDRESS=ray_cluster.address
    )
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


def test_kill_9_mid_run_re_adopts_every_ray_shard(ray_proc: ServerProcess) -> None:
    # 6 x standard on 3 nodes of 2 vCPU: all at once; 4 s to 11.5 s each. The control
    # plane is killed 1 s after all started and down >= 3 s: shard 0 ends meanwhile.
    ticks = [8 + 3 * i for i in range(6)]
    run_id, marks = _submit(ray_proc, 6, base=8, step=3, gang=False)
    _wait_running(ray_proc, run_id, 6)
    time.sleep(1)
    gone, back = _restart(ray_proc, "kill9", down=3)
    _check(ray_proc, run_id, marks, 6, ticks)
    for i in (4, 5):  # the longest: logs shipped before, during and after the restart
        assert all(_phases(ray_proc, run_id, i, gone, back)), _phases(
            ray_proc, run_id, i, gone, back
        )
    assert ray_proc.term() == 0  # nothing left to watch: the hub goes with the plane
    assert _hub_gone(ray_proc)


@pytest.mark.parametrize("how", ["kill9", "term"])
def test_a_gang_runs_on_across_a_restart(ray_proc: ServerProcess, how: str) -> None:
    # 3 x ~10 s (long enough that a sandbox's start, billed too, stays far below 5%)
    run_id, marks = _submit(ray_proc, 3, base=20, step=0, gang=True)
    _wait_running(ray_proc, run_id, 3)

    def group() -> dict[str, Any] | None:
        found = [g for g in placement_group_table().values() if g["name"] == f"sylphx-{run_id}"]
        return found[0] if found else None

    pg = group()
    assert pg is not None and pg["state"] == "CREATED"
    time.sleep(1)  # some of their output shipped before the control plane goes
    gone, back = _restart(ray_proc, how, down=2)
    _check(ray_proc, run_id, marks, 3, [20] * 3)
    after = group()  # the same placement group held the gang throughout, and is released
    assert after is not None and after["placement_group_id"] == pg["placement_group_id"]
    deadline = time.monotonic() + 10
    while (after := group()) is not None and after["state"] != "REMOVED":
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert all(_phases(ray_proc, run_id, 0, gone, back))
    assert ray_proc.term() == 0
    assert _hub_gone(ray_proc)


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
