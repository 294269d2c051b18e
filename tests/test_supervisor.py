"""The local executor's attempt supervisor: exactly one copy, durable exits, re-adoption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import Server
from sylphx._server.executors.base import Exit, LaunchRequest
from sylphx._server.executors.local import supervisors
from sylphx._server.executors.local.executor import LocalExecutor
from sylphx._server.executors.local.statefiles import (
    EXIT_ROOM,
    TICK_NS,
    record_exits,
    reserve,
    spawn_ticks,
    start_ticks,
    started_ns,
)
from sylphx._server.executors.local.supervise import DRAIN_SECONDS
from sylphx._server.executors.local.supervisors import (
    BOOT,
    HERE,
    OPEN_SECONDS,
    SPARE_DELAY_SECONDS,
)


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


def test_the_true_start_of_a_flushed_attempt_is_reported_until_a_pass_commits(
    tmp_path: Path,
) -> None:
    """The attempt runs from its flush in the store; the executor then reports when its
    supervisor really spawned it (its timeout counts from that): again to the next pass
    if the one told was rolled back, never again once one committed, and not to a control
    plane that adopts it later. Its exit carries the same time."""
    state = tmp_path / "state"
    executor = LocalExecutor(1, 1 << 30, state, sandbox=False)
    later = LocalExecutor(1, 1 << 30, state, sandbox=False)
    try:
        handle = executor.launch(request(tmp_path, "sleep 30"))
        flushed = datetime.now(UTC)
        executor.flush()
        deadline = time.monotonic() + 20
        while not (starts := executor.starts()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ((reported, at),) = starts
        assert reported == handle and flushed <= at <= datetime.now(UTC)
        assert executor.starts() == []
        executor.flush(discard=True)  # that pass was rolled back: the next one is told
        assert executor.starts() == [(handle, at)]
        executor.flush()  # that one committed
        assert executor.starts() == []
        executor.flush(discard=True)
        assert executor.starts() == []
        assert later.adopt(handle) and later.starts() == []
        executor.signal(handle, "term")
        (exit,) = wait_exit(executor)
        assert exit.started_at == at
    finally:
        executor.close()
        later.close()


@pytest.mark.parametrize(
    "record",
    [b"", b"123 456", b"123 456 \xc2\xb2", b"1 2 99999999999999999999999", b"\xff\xfe", b"1 2 -5"],
)
def test_a_start_record_that_is_not_one_is_no_start_and_no_error(
    tmp_path: Path, record: bytes
) -> None:
    """An unsandboxed shard can write its attempt's records: whatever is there, reading
    its start never raises (one bad file must not fail every tenant's pass)."""
    (tmp_path / "pid").write_bytes(record)
    assert started_ns(str(tmp_path)) is None


def test_a_start_record_that_is_a_fifo_or_a_folder_never_blocks(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pid")
    assert started_ns(str(tmp_path)) is None  # no writer: read at once, empty
    (tmp_path / "pid").unlink()
    (tmp_path / "pid").mkdir()
    assert started_ns(str(tmp_path)) is None
    assert started_ns(str(tmp_path / "absent")) is None


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
    the next batch, once the first one's supervisor stopped taking batches, goes to a
    spare; closing the executor lets the unused spares go."""
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    try:
        assert executor.poll() == [] and executor._supervisors._spares == []  # none yet
        first = executor.launch(request(tmp_path, "exit 0"))
        executor.flush()
        time.sleep(max(SPARE_DELAY_SECONDS, OPEN_SECONDS) + 0.1)  # its supervisor closed
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
            pid_file = Path(executor._folder(handle)) / "pid"
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


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_batch_reaches_its_supervisor_through_a_pipe_never_a_file(tmp_path: Path) -> None:
    """Every shard's environment (secrets included) goes to the supervisor on its stdin;
    a batch bigger than a pipe holds by default still starts whole."""
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    secret = "s3cr3t-" + "x" * 2000  # 130 shards x 2 KB: far past a 64 KiB pipe
    try:
        base = request(tmp_path, 'test -n "$TOKEN"')
        for i in range(130):
            env = {"TOKEN": secret}
            executor.launch(LaunchRequest(**{**base.__dict__, "index": i, "env": env}))
        executor.flush()
        exits = wait_exits(executor, 130)
        assert {e.returncode for e in exits} == {0}
    finally:
        executor.close()
    assert files_holding(tmp_path, secret.encode()) == []
    assert not (tmp_path / "state" / "batches").exists()


def test_a_batch_too_big_for_the_pipe_is_written_from_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the pipe cannot be made big enough (an unprivileged control plane past
    pipe-max-size), a thread writes the batch: the pass does not wait for the reader."""
    monkeypatch.setattr(supervisors, "fit_pipe", lambda fd, size: False)
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    try:
        base = request(tmp_path, "exit 5")
        for i in range(3):
            executor.launch(LaunchRequest(**{**base.__dict__, "index": i}))
        executor.flush()
        assert {e.returncode for e in wait_exits(executor, 3)} == {5}
    finally:
        executor.close()


def test_a_batch_cut_short_starts_nothing(tmp_path: Path) -> None:
    """A supervisor whose stdin ends mid-batch (the control plane died writing it) claims
    nothing and exits: the attempts are recorded lost later, never half started."""
    folder = tmp_path / "att"
    batch = f'[{{"dir": "{folder}", "argv": ["true"], "env": {{}}, "cwd": "/"'
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", BOOT, HERE, str(tmp_path / "fifo")],
        input=batch.encode(),  # no closing bracket, no newline
        timeout=30,
    )
    assert proc.returncode == 0 and not folder.exists()


def test_a_dead_spare_hands_its_batch_to_a_fresh_supervisor(tmp_path: Path) -> None:
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    try:
        executor.launch(request(tmp_path, "exit 0"))
        executor.flush()
        time.sleep(max(SPARE_DELAY_SECONDS, OPEN_SECONDS) + 0.1)  # its supervisor closed
        wait_exit(executor)  # spares start here
        for spare in executor._supervisors._spares:
            spare.kill()
            spare.wait()
        base = request(tmp_path, "exit 6")
        executor.launch(LaunchRequest(**{**base.__dict__, "index": 1}))
        executor.flush()
        (exit,) = wait_exit(executor)
        assert exit.returncode == 6
    finally:
        executor.close()


def test_an_exit_on_record_means_a_complete_log(tmp_path: Path) -> None:
    """Output written just before the end is in the log when the exit is reported; a
    process that escaped the shard's group and holds its stdout delays the record by at
    most DRAIN_SECONDS, then the log is closed."""
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    stray = tmp_path / "stray.pid"
    script = (  # the stray writes its pid once it is in a session of its own
        f"setsid sh -c 'echo $$ > {stray}; exec sleep 60' &"
        f" while [ ! -s {stray} ]; do sleep 0.01; done; head -c 300000 /dev/zero; echo end"
    )
    req = request(tmp_path, script)
    try:
        started = time.monotonic()
        executor.launch(req)
        executor.flush()
        (exit,) = wait_exit(executor)
        took = time.monotonic() - started
        assert exit.returncode == 0 and exit.log_truncated == ()
        assert Path(req.stdout_path).read_bytes() == b"\0" * 300_000 + b"end\n"
        assert DRAIN_SECONDS - 0.5 <= took < DRAIN_SECONDS + 10
    finally:
        executor.close()
        if stray.exists():
            os.kill(int(stray.read_text()), signal.SIGKILL)


def test_exit_records_old_and_new_both_parse(tmp_path: Path) -> None:
    executor = LocalExecutor(1, 1 << 30, tmp_path / "state", sandbox=False)
    try:
        for handle, text, truncated in [
            ("att:r/0.1", "3 1000 2000 ", ()),  # written before log caps
            ("att:r/1.1", "0 1000 2000 \nlogcap stdout stderr", ("stdout", "stderr")),
            ("att:r/2.1", "1 1000 2000 LaunchError: x y\nlogcap stderr", ("stderr",)),
        ]:
            folder = Path(executor._folder(handle))
            folder.mkdir(parents=True)
            (folder / "exit").write_text(text)
            exit = executor._check(handle, time.monotonic())
            assert exit is not None and exit.log_truncated == truncated
            assert exit.returncode == int(text[0])
        assert exit.reason == "LaunchError: x y"
    finally:
        executor.close()


def test_an_exit_left_in_its_reserved_room_counts_once_it_is_whole(tmp_path: Path) -> None:
    """The record is written in place into ``exit.reserved`` (first byte last), then
    renamed to ``exit``. A record the rename never moved is read where it is -- with its
    supervisor alive or dead -- and a blank or half-written room is no end at all."""
    executor = LocalExecutor(1, 1 << 30, tmp_path / "state", sandbox=False)
    try:
        handle = "att:r/0.1"
        folder = Path(executor._folder(handle))
        folder.mkdir(parents=True)
        (folder / "claim").write_text(f"{os.getpid()} {start_ticks(os.getpid())}")  # alive
        os.close(reserve(str(folder)))
        room = folder / "exit.reserved"
        assert room.read_bytes() == bytes(EXIT_ROOM) and (folder / "pid.tmp").exists()
        assert executor._check(handle, time.monotonic()) is None  # running
        record = b"7 1000 2000 \nlogcap stdout:diskfull\n"
        with open(room, "r+b") as fh:
            fh.write(b"\0" + record[1:])  # caught before its first byte
        assert executor._check(handle, time.monotonic()) is None
        with open(room, "r+b") as fh:
            fh.write(record[:1])  # whole; the padding after it stays (no truncation)
        assert executor._check(handle, time.monotonic(), deep=False) is None  # cheap scans
        exit = executor._check(handle, time.monotonic())  # deep scans, announced exits
        assert exit is not None
        assert (exit.returncode, exit.log_truncated) == (7, ("stdout:diskfull",))
        assert exit.started_at is not None and exit.ended_at > exit.started_at
        (folder / "claim").write_text("1 0")  # its supervisor is gone: still the record
        exit = executor._check(handle, time.monotonic())
        assert exit is not None and exit.returncode == 7
        record_exits([(str(folder), "7 1000 2000 ")])  # the normal way: in place, renamed
        assert not room.exists() and (folder / "exit").read_text() == "7 1000 2000 \n"
        exit = executor._check(handle, time.monotonic())
        assert exit is not None and (exit.returncode, exit.log_truncated) == (7, ())
    finally:
        executor.close()


def test_a_log_past_the_cap_is_reported_with_the_exit(tmp_path: Path) -> None:
    executor = LocalExecutor(1, 1 << 30, tmp_path / "state", sandbox=False, max_log_bytes=4096)
    req = request(tmp_path, "head -c 100000 /dev/zero; echo tail >&2")
    try:
        executor.launch(req)
        executor.flush()
        (exit,) = wait_exit(executor)
        assert (exit.returncode, exit.log_truncated) == (0, ("stdout",))
        assert len(Path(req.stdout_path).read_bytes()) < 4096 + 200
        assert Path(req.stderr_path).read_text() == "tail\n"
    finally:
        executor.close()


def test_a_batch_past_the_open_file_limit_still_runs(tmp_path: Path) -> None:
    """A supervisor holds 5 fds per running shard: past its open-file limit it raises its
    own (up to the hard limit), and its shards inherit the raised soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    base = request(tmp_path, "ulimit -n; sleep 1")
    reqs = [  # 5 fds x 60 shards > 256
        LaunchRequest(**{**base.__dict__, "index": i, "stdout_path": f"{tmp_path}/{i}.out"})
        for i in range(60)
    ]
    try:
        for req in reqs:
            executor.launch(req)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the supervisor
        try:
            executor.flush()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert {e.returncode for e in wait_exits(executor, 60)} == {0}
    finally:
        executor.close()
    assert {int(Path(r.stdout_path).read_text()) >= 256 for r in reqs} == {True}
