"""Open supervisors: one supervisor takes the batches of several passes (real processes).

A stream of small runs launches a few attempts per pass; starting a Python interpreter
per pass cost more than the shards (P7). A supervisor given a batch takes the next
passes' batches for OPEN_SECONDS, up to OPEN_SHARDS shards in all, reading them while
it supervises the earlier ones; then its stdin is closed and it exits once they ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Server
from sylphx._server.executors.base import Exit, LaunchRequest
from sylphx._server.executors.local import supervisors
from sylphx._server.executors.local.executor import LocalExecutor
from sylphx._server.executors.local.inbox import Inbox
from sylphx._server.executors.local.supervisors import OPEN_SECONDS


def request(tmp_path: Path, script: str, index: int) -> LaunchRequest:
    logs = tmp_path / "logs"
    return LaunchRequest(
        run_id="wrk_batches",
        index=index,
        attempt=1,
        count=64,
        indexed=True,
        command=["sh", "-c", script],
        env={},
        machine="nano",
        stdout_path=f"{logs}/{index}.out",
        stderr_path=f"{logs}/{index}.err",
        working_dir=tmp_path,
    )


def wait_exits(executor: LocalExecutor, n: int, timeout: float = 30) -> dict[str, Exit]:
    exits: dict[str, Exit] = {}
    deadline = time.monotonic() + timeout
    while len(exits) < n and time.monotonic() < deadline:
        for exit in executor.poll():
            assert exit.handle not in exits, "an exit reported twice"
            exits[exit.handle] = exit
        time.sleep(0.02)
    assert len(exits) == n, f"{len(exits)} of {n} exits reported"
    return exits


def claims(state: Path) -> dict[str, int]:
    """Each claimed attempt's supervisor pid (a claim caught before its owner's write, an
    empty file, is not counted yet)."""
    texts = {p.parent.name: p.read_text().split() for p in state.rglob("claim")}
    return {name: int(text[0]) for name, text in texts.items() if text}


def launch(executor: LocalExecutor, tmp_path: Path, script: str, index: int) -> str:
    handle = executor.launch(request(tmp_path, script, index))
    executor.flush()
    return handle


def test_later_passes_batches_go_to_the_open_supervisor_while_its_shard_runs(
    tmp_path: Path,
) -> None:
    """Three passes, one supervisor: the second and third batches are read and started
    while the first one's shard still runs (their exits come first), and each exit is
    reported once."""
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    try:
        slow = launch(executor, tmp_path, "sleep 3; exit 7", 0)
        claims_when(state, 1)  # it read its first batch
        quick = []
        for i in (1, 2):
            quick.append(launch(executor, tmp_path, f"exit {i}", i))
            claims_when(state, i + 1)
        assert len(set(claims(state).values())) == 1  # one supervisor for all
        early = wait_exits(executor, 2, timeout=2.5)  # before the slow one's end
        assert {h: e.returncode for h, e in early.items()} == {quick[0]: 1, quick[1]: 2}
        late = wait_exits(executor, 1)
        assert late[slow].returncode == 7
    finally:
        executor.close()


def claims_when(state: Path, n: int, timeout: float = 10) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = claims(state)
        if len(found) >= n:
            return found
        time.sleep(0.01)
    raise AssertionError(f"fewer than {n} attempts claimed")


def test_a_supervisor_stops_taking_batches_after_open_seconds_and_then_exits(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    try:
        launch(executor, tmp_path, "exit 0", 0)
        first = set(claims_when(state, 1).values())
        wait_exits(executor, 1)
        (proc,) = [p for p in executor._supervisors._running if p.pid in first]
        time.sleep(OPEN_SECONDS + 0.1)
        executor.poll()  # tends: closes its stdin
        assert proc.wait(timeout=10) == 0  # its shard ended, its stdin closed: it exits
        launch(executor, tmp_path, "exit 0", 1)
        later = set(claims_when(state, 2).values()) - first
        assert later and later.isdisjoint(first)  # another supervisor took it
        wait_exits(executor, 1)
    finally:
        executor.close()


def test_a_full_supervisor_takes_no_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisors, "OPEN_SHARDS", 2)
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    try:
        for i in range(3):
            launch(executor, tmp_path, "sleep 0.5", i)
            claims_when(state, i + 1)  # read: it may take the next one, if it has room
        owners = claims(state)
        by_pid: dict[int, int] = {}
        for pid in owners.values():
            by_pid[pid] = by_pid.get(pid, 0) + 1
        assert sorted(by_pid.values()) == [1, 2]  # two, then the full one took no more
        wait_exits(executor, 3)
    finally:
        executor.close()


def test_the_parts_of_one_batch_go_to_different_supervisors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big batch is split for the CPUs: its parts never share a supervisor, open or
    not; the next pass's batch then goes to one of them."""
    monkeypatch.setattr(supervisors, "SHARDS_PER_SUPERVISOR", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    try:
        for i in range(4):
            executor.launch(request(tmp_path, "sleep 0.5", i))
        executor.flush()
        owners = claims_when(state, 4)
        assert len(set(owners.values())) == 2
        launch(executor, tmp_path, "exit 0", 4)
        assert set(claims_when(state, 5).values()) == set(owners.values())
        wait_exits(executor, 5)
    finally:
        executor.close()


def test_a_supervisor_that_stopped_reading_never_holds_up_the_pass(tmp_path: Path) -> None:
    """An open supervisor that does not read (stopped by a signal) is given nothing more:
    the passes' writes never wait on its pipe, and their batches start elsewhere."""
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    try:
        launch(executor, tmp_path, "sleep 5", 0)
        (pid,) = set(claims_when(state, 1).values())
        os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(1, 25):  # more than a pipe's pages could hold unread
                start = time.monotonic()
                executor.launch(request(tmp_path, "exit 0", i))
                executor.flush()
                assert time.monotonic() - start < 2, f"flush {i} waited"
            owners = claims_when(state, 24)  # at most one batch waits in its pipe
            assert sum(1 for p in owners.values() if p == pid) == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_exits(executor, 25)  # and starts once it reads again
    finally:
        executor.close()


def test_an_open_supervisor_that_died_hands_the_batch_to_a_fresh_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    try:
        launch(executor, tmp_path, "exit 0", 0)
        (pid,) = set(claims_when(state, 1).values())
        wait_exits(executor, 1)
        os.kill(pid, signal.SIGKILL)
        (proc,) = [p for p in executor._supervisors._running if p.pid == pid]
        proc.wait(timeout=10)
        handle = launch(executor, tmp_path, "exit 9", 1)
        assert wait_exits(executor, 1)[handle].returncode == 9
        assert set(claims(state).values()) - {pid}
        assert f"shard supervisor {pid} ended with signal 9" in caplog.text  # said, once
        assert caplog.text.count(f"supervisor {pid} ") == 1
    finally:
        executor.close()


def test_the_control_plane_going_away_ends_open_supervisors_after_their_shards(
    tmp_path: Path,
) -> None:
    """Closing the executor (as a control plane that exits) closes open supervisors'
    stdin: the shard they run goes on to its end and is recorded, then they exit."""
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    launch(executor, tmp_path, "sleep 1; exit 3", 0)
    (pid,) = set(claims_when(state, 1).values())
    (proc,) = [p for p in executor._supervisors._running if p.pid == pid]
    executor.close()
    assert proc.poll() is None  # still supervising its shard
    assert proc.wait(timeout=15) == 0
    (exit_file,) = state.rglob("exit")
    assert exit_file.read_text().split()[0] == "3"


def test_inbox_reads_batches_as_they_come_and_ignores_a_bad_line() -> None:
    read, write = os.pipe()
    inbox = Inbox(read)
    try:
        os.write(write, b'[{"dir": "a"}]\n[{"dir": "b"}]\nnot json\n[{"di')
        assert inbox.first() == [{"dir": "a"}]
        assert inbox.pump() and inbox.take() == [[{"dir": "b"}]]  # the rest waits
        os.write(write, b'r": "c"}]\n')
        assert inbox.pump() and inbox.take() == [[{"dir": "c"}]]
        os.close(write)
        write = -1
        assert not inbox.pump() and not inbox.open
    finally:
        os.close(read)
        if write != -1:
            os.close(write)


def test_a_supervisor_with_stdin_closed_before_a_line_starts_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", supervisors.BOOT, supervisors.HERE, "x"],
        input=b'[{"dir": "/nonexistent/never"}]',  # no newline: cut short
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0 and not Path("/nonexistent/never").exists()
    # said where the control plane keeps supervisors' stderr (state/supervisors.log)
    assert b"stdin ended inside a batch (31 bytes)" in proc.stderr


@pytest.mark.parametrize("stdin_ends", [True, False], ids=["then stdin ends", "stdin open"])
def test_a_batch_read_while_another_starts_is_started_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdin_ends: bool
) -> None:
    """The root cause of the batches lost in P7: a supervisor starting a later batch looks
    at its pipes every REAP_EVERY spawns, which also reads whatever came on stdin meanwhile.
    When the next batch came then, with stdin's end right behind it (OPEN_SECONDS were
    over: the control plane closes it at its next poll), and the shards had all ended, the
    supervisor exited without starting it; with stdin still open, that batch waited in its
    buffer for the next event (up to a second). Seen twice in ~30 rounds: a pass's 6-7
    runs of `true` ended "the attempt's supervisor never started"."""
    from types import SimpleNamespace

    from sylphx._server.executors.local import supervise

    read, write = os.pipe()
    batches = [[{"dir": str(tmp_path / name)}] for name in ("a", "b", "c")]

    def send(batch: list[dict[str, str]]) -> None:
        os.write(write, json.dumps(batch).encode() + b"\n")

    send(batches[0])  # the first, waited for
    started: list[list[dict[str, object]]] = []
    waiting = threading.Event()

    def start_batch(requests: list[dict[str, object]], me: str, loop: Any) -> list[str]:
        started.append(requests)
        if len(started) == 2:  # while a later batch starts, the next one comes ...
            send(batches[2])
            if stdin_ends:
                os.close(write)  # ... and stdin's end
            loop.step(0)  # as start_batch does every REAP_EVERY spawns: both are read
        return []

    real_step = supervise.Loop.step

    def step(loop: Any, timeout: float) -> list[str]:
        if timeout < 0:
            waiting.set()  # blocked until something happens
        return real_step(loop, timeout)

    monkeypatch.setattr(supervise, "start_batch", start_batch)
    monkeypatch.setattr(supervise.Loop, "step", step)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(fileno=lambda: read))
    outcome: list[int] = []
    runner = threading.Thread(
        target=lambda: outcome.append(supervise.main([str(tmp_path)])), daemon=True
    )
    runner.start()
    try:
        assert waiting.wait(10)  # the first batch started; the supervisor waits for more
        waiting.clear()
        send(batches[1])
        if not stdin_ends:
            assert waiting.wait(10)  # it waits again: the third batch started by then
            assert started == batches
        else:
            runner.join(timeout=10)
            assert started == batches and outcome == [0]
    finally:
        with contextlib.suppress(OSError):  # stdin's end (the control plane's, later)
            os.close(write)
        runner.join(timeout=10)
        os.close(read)


def test_a_batch_whose_supervisor_died_before_making_its_folders_ends_as_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor can die (or be killed) after a batch was written to it and before it
    made a single attempt's folder: that batch's attempts are recorded as never started
    once nobody claimed them in LOST_AFTER_SECONDS, as those of a supervisor that made
    its folders -- not left running forever, billed, with nothing behind them (seen in
    P7: ten runs of `true` running for 17 minutes). A late supervisor starts none. They
    are lost, not failed: nothing of theirs ran, so they are retried (see
    test_a_run_whose_batch_no_supervisor_started_is_retried_not_failed)."""
    from sylphx._server.executors.local import executor as local

    monkeypatch.setattr(local, "LOST_AFTER_SECONDS", 0.3)
    monkeypatch.setattr(local, "DEEP_SCAN_SECONDS", 0.1)
    state = tmp_path / "state"
    executor = LocalExecutor(64, 64 << 30, state, sandbox=False)
    real = executor._supervisors.start
    given: list[list[dict[str, object]]] = []
    monkeypatch.setattr(executor._supervisors, "start", lambda batch: given.append(batch) or [])
    try:
        handle = launch(executor, tmp_path, "touch ran; exit 0", 0)
        folder = Path(executor._folder(handle))
        assert not folder.exists()  # the batch went nowhere
        (exit,) = wait_exits(executor, 1).values()
        assert exit.lost and exit.reason == "Lost: the attempt's supervisor never started it"
        assert (folder / "claim").read_text() == "lost"
        assert real(given[0]) == []  # a supervisor that gets it late...
        time.sleep(1)
        assert not (tmp_path / "ran").exists()  # ... starts nothing
        assert executor.poll() == []  # (and nothing is reported twice)
        assert (state / "supervisors.log").read_bytes() == b""  # where a crash would say why
    finally:
        executor.close()


def test_a_run_whose_batch_no_supervisor_started_is_retried_not_failed(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """P7 (1,000 runs of `true`), once in some 15 rounds: one pass's batch of 6 single-shard
    runs was never claimed by the supervisor it was written to, and all 6 runs ended
    ``failed`` with exit 127 ("LaunchError: the attempt's supervisor never started"), the
    shard's own failure, not retried. Nothing of them ran: they are lost now, retried at
    once as a preemption (never the failure budget), and the run succeeds."""
    from sylphx._server.executors.local import executor as local

    monkeypatch.setattr(local, "LOST_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(local, "DEEP_SCAN_SECONDS", 0.1)
    server = make_server()
    sup = server.plane.executor._supervisors  # type: ignore[attr-defined]
    real, swallowed = sup.start, []

    def start(batch: list[dict[str, object]]) -> list[object]:
        if not swallowed:  # written to a supervisor that then never reads it
            swallowed.append(batch)
            return []
        return real(batch)  # type: ignore[no-any-return]

    monkeypatch.setattr(sup, "start", start)
    run = server.http.post("/v1/runs", json={"command": ["true"], "machine": "nano"}).json()
    deadline = time.monotonic() + 60
    done = run
    while done["status"] not in ("succeeded", "failed", "partial", "cancelled"):
        assert time.monotonic() < deadline, done
        done = server.http.get(f"/v1/runs/{run['id']}", params={"wait": 10}).json()
    assert swallowed and done["status"] == "succeeded", done
    (shard,) = server.http.get(f"/v1/runs/{run['id']}/shards").json()
    assert (shard["attempts"], shard["preemptions"], shard["exitCode"]) == (2, 1, 0), shard
    lost = shard["history"][0]
    assert lost["status"] == "preempted", lost
    assert lost["reason"] == "Lost: the attempt's supervisor never started it", lost


def test_a_never_started_attempt_meters_nothing_on_a_full_disk_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the exit of an attempt no supervisor claimed is written to its
    folder as starting and ending at once (nothing ran); on a full disk the control plane
    settles it unwritten, and without a start time there it would be metered from its
    launch (a lost attempt is billed when SYLPHX_BILL_PREEMPTIONS is on)."""
    from sylphx._server.executors.local import executor as local

    def full(path: str, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local, "LOST_AFTER_SECONDS", 0.3)
    monkeypatch.setattr(local, "DEEP_SCAN_SECONDS", 0.1)
    monkeypatch.setattr(local, "write_atomic", full)
    executor = LocalExecutor(64, 64 << 30, tmp_path / "state", sandbox=False)
    monkeypatch.setattr(executor._supervisors, "start", lambda batch: [])  # it went nowhere
    try:
        launch(executor, tmp_path, "exit 0", 0)
        (exit,) = wait_exits(executor, 1).values()
        assert exit.lost and exit.started_at == exit.ended_at
    finally:
        executor.close()
