"""A pass acts only after it committed (docs/adr/0004): with the real local executor (its
supervisors, claims and processes; no sandbox, so shards can mark a file of the test), on
the session's store (SYLPHX_TEST_STORE), no process or supervisor claim ever exists for
an attempt the store does not know, and an attempt stored but never handed over (the
control plane died in between) is started exactly once by the next control plane."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from conftest import Server, pids_of_run, start_server
from sylphx._server.executors.base import LaunchRequest
from sylphx._server.executors.local.executor import LocalExecutor
from sylphx._server.store import AttemptRow


def _attempts(server: Server, run_id: str) -> list[AttemptRow]:
    with server.plane.sessions() as s:
        return list(s.scalars(select(AttemptRow).where(AttemptRow.run_id == run_id)))


def _claims(executor: LocalExecutor, run_id: str) -> list[str]:
    """The attempts of ``run_id`` a supervisor (or anyone) claimed, as ``I.N``."""
    return sorted(p.parent.name for p in (executor.state_dir / run_id).glob("*/claim"))


def _submit(server: Server, marks: Path, n: int, **spec: Any) -> str:
    command = ["sh", "-c", f'echo "$SYLPHX_SHARD_INDEX.$SYLPHX_SHARD_ATTEMPT" >> {marks}']
    body = {"command": command, "machine": "nano", "parallelism": n, **spec}
    r = server.http.post("/v1/runs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("error", ["OperationalError", "StaleDataError"])
def test_a_pass_whose_commit_fails_starts_nothing(
    make_server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    server = make_server(sandbox=False)  # the shards append to a file of the test's
    rec, executor = server.plane.reconciler, server.plane.executor
    assert isinstance(executor, LocalExecutor)
    failed, resume = threading.Event(), threading.Event()

    def fail_once(session: Session) -> None:
        """The pass's own commit (not a savepoint's) raises, once it stored attempts."""
        mine = threading.current_thread().name == "sylphx-reconciler"
        if not mine or failed.is_set() or session.in_nested_transaction():
            return
        if session.scalar(select(func.count()).select_from(AttemptRow)):  # decided
            failed.set()
            if error == "StaleDataError":  # a concurrent writer won
                raise StaleDataError("injected: the row changed under the pass")
            raise OperationalError("COMMIT", {}, Exception("injected: commit failed"))

    real_recover = rec.recover

    def held_recover() -> None:  # the pass after the failure waits for the checks below
        resume.wait(30)
        real_recover()

    monkeypatch.setattr(rec, "recover", held_recover)
    event.listen(server.plane.sessions, "before_commit", fail_once)
    try:
        marks = tmp_path / "marks"
        run_id = _submit(server, marks, 2, gangScheduling=False)
        assert failed.wait(30), "no pass decided to start the shards"
        deadline = time.monotonic() + 1.5  # time enough for any supervisor to claim
        while time.monotonic() < deadline:
            assert _attempts(server, run_id) == []  # rolled back with the pass...
            assert _claims(executor, run_id) == []  # ...and no supervisor has one
            assert pids_of_run(run_id) == []  # ...nor is any shard process running
            time.sleep(0.1)
        assert not marks.exists() and not executor._pending  # its launches dropped too
    finally:
        event.remove(server.plane.sessions, "before_commit", fail_once)
        resume.set()
    done = server.wait(run_id)
    assert done["status"] == "succeeded", (done, [a.reason for a in _attempts(server, run_id)])
    assert sorted(marks.read_text().split()) == ["0.1", "1.1"]  # each ran once, attempt 1
    assert sorted((a.number, a.exit_code) for a in _attempts(server, run_id)) == [(1, 0), (1, 0)]


def test_a_launch_that_fails_after_the_commit_is_recorded(
    make_server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(sandbox=False)
    executor = server.plane.executor
    assert isinstance(executor, LocalExecutor)
    supervisors = executor._supervisors
    real_hand = supervisors._hand
    calls: list[int] = []

    def hand(batch: bytes, *args: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_hand(batch, *args)

    monkeypatch.setattr(supervisors, "_hand", hand)
    marks = tmp_path / "marks"
    # the host out of processes is no fault of the shard's: retried as a preemption, not
    # from its failure budget (none here)
    run_id = _submit(server, marks, 2, gangScheduling=False, backoffLimitPerIndex=0)
    assert server.wait(run_id)["status"] == "succeeded"
    attempts = sorted(_attempts(server, run_id), key=lambda a: a.number)
    assert [a.number for a in attempts] == [1, 1, 2, 2]
    for first in attempts[:2]:  # recorded by the next pass, the shard retried
        assert first.exit_code == 127 and (first.reason or "").startswith("Lost: ")
        assert "could not start its supervisor" in (first.reason or "")
        assert first.state == "preempted"
        assert "could not start the shard" in Path(first.stderr_path or "").read_text()
    assert [a.exit_code for a in attempts[2:]] == [0, 0]
    assert sorted(marks.read_text().split()) == ["0.2", "1.2"]  # the first never ran


def test_a_crash_between_commit_and_launch_starts_the_attempt_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    first, stop_first = start_server(home, sandbox=False)
    stops: list[Callable[[], None]] = [stop_first]
    try:
        executor, rec = first.plane.executor, first.plane.reconciler
        assert isinstance(executor, LocalExecutor)
        crashed = threading.Event()
        real_flush = executor.flush

        def crash(*, discard: bool = False) -> None:
            if discard or not executor._pending or crashed.is_set():
                return real_flush(discard=discard)
            real_flush(discard=True)  # the prepared launches die with the process...
            rec._stop.set()  # ...and so does its reconciler
            crashed.set()
            raise RuntimeError("injected: the control plane died before it acted")

        monkeypatch.setattr(executor, "flush", crash)
        marks = tmp_path / "marks"
        run_id = _submit(first, marks, 3, gangScheduling=False)
        assert crashed.wait(30)
        attempts = _attempts(first, run_id)  # committed: stored as started, with handles
        assert sorted(a.handle or "" for a in attempts) == [f"att:{run_id}/{i}.1" for i in range(3)]
        assert all(a.ended_at is None for a in attempts)
        time.sleep(0.5)
        assert _claims(executor, run_id) == [] and pids_of_run(run_id) == []
        stop_first()
        stops.remove(stop_first)

        second, stop_second = start_server(home, sandbox=False)  # recover() launches them again
        stops.append(stop_second)
        started = time.monotonic()
        assert second.wait(run_id)["status"] == "succeeded"
        assert time.monotonic() - started < 8  # not left to the lost-attempt timeout
        assert sorted(marks.read_text().split()) == ["0.1", "1.1", "2.1"]  # once each
        after = _attempts(second, run_id)
        assert sorted((a.number, a.exit_code) for a in after) == [(1, 0)] * 3
    finally:
        for stop in reversed(stops):
            stop()


def test_started_tells_a_stored_attempt_never_handed_over(tmp_path: Path) -> None:
    """What recover() asks: an attempt adopted but never flushed was not started (and is
    launched again); one a supervisor claimed was, even for a second control plane."""
    state = tmp_path / "state"
    first, second = (
        LocalExecutor(1, 1 << 30, state, sandbox=False),
        LocalExecutor(1, 1 << 30, state, sandbox=False),
    )
    try:
        req = LaunchRequest(
            run_id="wrk_x", index=0, attempt=1, count=1, indexed=True,
            command=["sh", "-c", "exit 3"], env={}, machine="nano",
            stdout_path=str(tmp_path / "out"), stderr_path=str(tmp_path / "err"),
            working_dir=None,
        )  # fmt: skip
        handle = first.launch(req)
        assert second.adopt(handle) and not second.started(handle)  # prepared, not flushed
        first.flush()
        assert first.started(handle)  # handed over
        deadline = time.monotonic() + 10
        while not second.started(handle):  # claimed: the second one sees it too
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert second.launch(req) == handle  # adopted, not queued again
        assert not second._pending
    finally:
        first.close()
        second.close()
