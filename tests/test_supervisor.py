"""The local executor's attempt supervisor: exactly one copy, durable exits, re-adoption."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from conftest import Server
from sylphx._server.executors.base import Exit, LaunchRequest
from sylphx._server.executors.local import LocalExecutor
from sylphx._server.executors.supervise import TICK_NS, spawn_ticks, start_ticks
from sylphx._server.executors.supervisors import SPARE_DELAY_SECONDS


def request(tmp_path: Path, script: str, attempt: int = 1) -> LaunchRequest:
    logs = tmp_path / "logs"
    return LaunchRequest(
        run_id="wrk_test",
        index=0,
        attempt=attempt,
        count=1,
        indexed=True,
        command=["sh", "-c", script],
        env={},
        machine="nano",
        stdout_path=f"{logs}/{attempt}.out",
        stderr_path=f"{logs}/{attempt}.err",
        working_dir=tmp_path,
    )


def wait_exit(executor: LocalExecutor, timeout: float = 20) -> list[Exit]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exits = executor.poll()
        if exits:
            return exits
        time.sleep(0.02)
    raise AssertionError("no exit reported")


def wait_exits(executor: LocalExecutor, n: int, timeout: float = 30) -> list[Exit]:
    exits: list[Exit] = []
    deadline = time.monotonic() + timeout
    while len(exits) < n and time.monotonic() < deadline:
        exits += executor.poll()
        time.sleep(0.02)
    assert len(exits) == n, f"{len(exits)} of {n} exits reported"
    return exits


def test_two_servers_launching_one_attempt_start_it_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, second = (
        LocalExecutor(1, 1 << 30, state, sandbox=False),
        LocalExecutor(1, 1 << 30, state, sandbox=False),
    )
    try:
        req = request(tmp_path, f"echo ran >> {tmp_path / 'ran'}; exit 4")
        assert first.launch(req) == second.launch(req)
        first.flush()
        second.flush()  # two supervisors race for the claim: one wins, the other stands by
        assert first.launch(req) == "att:wrk_test/0.1"  # already claimed: adopted, not re-run
        first.flush()
        (exit,) = wait_exit(first)
        assert (exit.handle, exit.returncode, exit.reason) == ("att:wrk_test/0.1", 4, None)
        assert exit.started_at is not None and exit.started_at <= exit.ended_at
        assert exit.ended_at <= datetime.now(UTC)
        assert (tmp_path / "ran").read_text() == "ran\n"
        (again,) = wait_exit(second)  # the other server sees the same recorded exit
        assert again == exit
    finally:
        first.close()
        second.close()


def test_missing_program_is_a_launch_error_recorded_by_the_supervisor(tmp_path: Path) -> None:
    executor = LocalExecutor(1, 1 << 30, tmp_path / "state", sandbox=False)
    try:
        req = request(tmp_path, "")
        req = LaunchRequest(**{**req.__dict__, "command": ["/no/such/program"]})
        executor.launch(req)
        executor.flush()
        (exit,) = wait_exit(executor)
        assert exit.returncode == 127 and (exit.reason or "").startswith("LaunchError:")
        assert "could not start the shard" in Path(req.stderr_path).read_text()
    finally:
        executor.close()


def test_an_end_is_recorded_once_even_when_reported_twice(server: Server) -> None:
    run = server.submit(command=["true"])
    server.wait(run["id"])
    before = server.shards(run["id"])
    handle = f"att:{run['id']}/0.1"
    plane = server.plane
    assert plane.executor.adopt(handle)  # as after a pass that failed: the exit comes again
    wait_for: Callable[[], bool] = lambda: not plane.executor.alive(handle)  # noqa: E731
    server.wait_for(wait_for)
    plane.reconciler.tick()
    assert server.shards(run["id"]) == before


def test_a_claim_caught_mid_write_is_not_taken_for_a_dead_supervisor(tmp_path: Path) -> None:
    """The claim file exists (O_EXCL) a moment before its owner is written: a poll in that
    moment must wait, not record "the attempt's supervisor died" (seen under heavy load)."""
    executor = LocalExecutor(1, 1 << 30, tmp_path / "state", sandbox=False)
    try:
        handle = executor.launch(request(tmp_path, "exit 0"))
        folder = tmp_path / "state" / handle.removeprefix("att:")
        folder.mkdir(parents=True)
        (folder / "claim").touch()  # what a supervisor's claim looks like before its write
        executor.flush()  # this supervisor finds the attempt claimed and stands by
        time.sleep(0.3)
        assert executor.poll() == []  # claimed by someone: neither lost nor started twice
        assert executor.alive(handle)
    finally:
        executor.close()


def test_a_big_batch_is_split_over_supervisors_and_every_exit_is_reported_once(
    tmp_path: Path,
) -> None:
    """130 attempts in one flush: more than one supervisor where there is more than one CPU,
    exits recorded while the batch still starts, each reported exactly once."""
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    try:
        base = request(tmp_path, "exit 3")
        handles = set()
        for i in range(130):
            req = LaunchRequest(**{**base.__dict__, "index": i, "command": ["sh", "-c", "exit 3"]})
            handles.add(executor.launch(req))
        executor.flush()
        expected = min(os.cpu_count() or 1, 3)  # ceil(130 / 64) batches at most
        assert len(executor._supervisors._running) == expected
        seen: list[Exit] = []
        deadline = time.monotonic() + 60
        while len(seen) < 130 and time.monotonic() < deadline:
            seen += executor.poll()
            time.sleep(0.05)
        time.sleep(1.2)  # past a full scan: nothing is reported twice
        seen += executor.poll()
        assert sorted(e.handle for e in seen) == sorted(handles)
        assert {e.returncode for e in seen} == {3}
    finally:
        executor.close()


def test_spare_supervisors_take_the_next_batch_and_exit_with_the_control_plane(
    tmp_path: Path,
) -> None:
    """After a batch, a spare supervisor per CPU waits (started once no batch is starting);
    the next batch goes to a spare; closing the executor lets the unused spares go."""
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    try:
        assert executor.poll() == [] and executor._supervisors._spares == []  # none yet
        first = executor.launch(request(tmp_path, "exit 0"))
        executor.flush()
        time.sleep(SPARE_DELAY_SECONDS + 0.1)
        ended = {e.handle: e.returncode for e in executor.poll()}  # spares start here
        spares = list(executor._supervisors._spares)
        assert len(spares) == (os.cpu_count() or 1)
        base = request(tmp_path, "exit 4")
        second = executor.launch(LaunchRequest(**{**base.__dict__, "index": 1}))
        executor.flush()
        assert len(executor._supervisors._spares) == len(spares) - 1  # one took the batch
        deadline = time.monotonic() + 30
        while len(ended) < 2 and time.monotonic() < deadline:
            ended |= {e.handle: e.returncode for e in executor.poll()}
            time.sleep(0.05)
        assert ended == {first: 0, second: 4}
    finally:
        executor.close()
    for spare in spares:  # the idle ones exit on close; the busy one when its shard ended
        assert spare.wait(timeout=10) == 0


def test_recorded_start_ticks_are_the_kernels_so_signals_reach_the_shard(tmp_path: Path) -> None:
    """The supervisor works a shard's start time out from the clock around its spawn
    instead of reading /proc; every pid file must still match /proc exactly (a mismatch
    would make the control plane treat the shard as gone and never signal it)."""
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    base = request(tmp_path, "sleep 60")
    handles = [executor.launch(LaunchRequest(**{**base.__dict__, "index": i})) for i in range(40)]
    executor.flush()
    try:
        for handle in handles:
            pid_file = executor._dir(handle) / "pid"
            deadline = time.monotonic() + 20
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            pid, ticks, _ = pid_file.read_text().split()
            assert ticks == start_ticks(int(pid)) != "0"
    finally:
        for handle in handles:
            executor.signal(handle, "kill")  # verified through the recorded ticks
        ended = wait_exits(executor, len(handles))
        executor.close()
    assert {e.returncode for e in ended} == {-9}


def test_spawn_ticks_reads_proc_when_the_spawn_straddles_a_tick() -> None:
    pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], {})
    try:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        straddle = (now // TICK_NS) * TICK_NS - 1, now  # readings in two ticks
        assert spawn_ticks(pid, *straddle) == start_ticks(pid)
        assert spawn_ticks(pid, now, now) == str(now // TICK_NS)  # one tick: no /proc read
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
