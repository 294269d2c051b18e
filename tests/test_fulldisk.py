"""Results survive a full disk: an attempt's end is recorded with its true status and
window, its logs cut with a marker, its usage billed -- whether the disk was filled by
something else, by the shard's own output, or while the control plane was down.

Each test mounts a small tmpfs (root only: skipped elsewhere) and fills it for real."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sylphx._server.executors.base import Exit, LaunchRequest
from sylphx._server.executors.local.executor import LocalExecutor
from sylphx._server.executors.local.shardlog import lost_marker

FULL_MARKER = lost_marker(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs of a given size at a folder; every one is unmounted afterwards."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to its last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert os.statvfs(folder).f_bfree == 0
    return filler


def request(disk: Path, script: str, **more: object) -> LaunchRequest:
    req = LaunchRequest(
        run_id="wrk_full",
        index=0,
        attempt=1,
        count=1,
        indexed=True,
        command=["sh", "-c", script],
        env={},
        machine="nano",
        stdout_path=f"{disk}/logs/out",
        stderr_path=f"{disk}/logs/err",
        working_dir=Path("/"),
    )
    return LaunchRequest(**{**req.__dict__, **more})


def wait_exit(executor: LocalExecutor, timeout: float = 30) -> Exit:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exits = executor.poll()
        if exits:
            (exit,) = exits
            return exit
        time.sleep(0.02)
    raise AssertionError("no exit reported")


def wait_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_disk_filled_by_something_else_keeps_the_true_exit(
    tmp_path: Path, small_disk: Callable[[Path, str], Path]
) -> None:
    """The shard starts, the disk fills, the shard prints and exits 0: recorded as it
    really ended (it used to be recorded lost, exit 137: its supervisor died writing the
    exit), and a control plane started later reads the same record."""
    disk = small_disk(tmp_path / "disk", "1m")
    go = tmp_path / "go"
    executor = LocalExecutor(1, 1 << 30, disk / "state", sandbox=False)
    try:
        handle = executor.launch(
            request(disk, f"while [ ! -e {go} ]; do sleep 0.01; done; echo result; exit 0")
        )
        executor.flush()
        wait_file(Path(executor._folder(handle)) / "pid")
        time.sleep(0.1)
        filled = datetime.now(UTC)
        fill(disk)
        go.touch()
        exit = wait_exit(executor)
        assert (exit.returncode, exit.reason) == (0, None)
        assert exit.started_at is not None and exit.started_at < filled < exit.ended_at
        assert exit.ended_at <= datetime.now(UTC)
        assert exit.log_truncated == ("stdout:diskfull",)  # "result" found no room
        assert (Path(executor._folder(handle)) / "exit").exists()  # renamed into place, full or not
    finally:
        executor.close()
    again = LocalExecutor(1, 1 << 30, disk / "state", sandbox=False)
    try:
        assert again.adopt(handle)
        assert wait_exit(again) == exit
    finally:
        again.close()


@pytest.mark.parametrize("secrets", [{}, {"TOKEN": "s3cr3t"}], ids=["spliced", "redacted"])
def test_a_shard_that_fills_the_disk_runs_to_its_end(
    tmp_path: Path, small_disk: Callable[[Path, str], Path], secrets: dict[str, str]
) -> None:
    """The shard's own output fills the disk: it keeps running (its writes succeed), its
    true exit code is recorded, logTruncated names the stream, and the log ends with
    the marker (over the log's last bytes: there is no room after them)."""
    disk = small_disk(tmp_path / "disk", "2m")
    after = tmp_path / "after"
    script = f"yes 0123456789 | head -c 8000000; echo went-on > {after}; echo bye >&2; exit 3"
    executor = LocalExecutor(1, 1 << 30, disk / "state", sandbox=False)
    try:
        executor.launch(request(disk, script, secrets=secrets))
        executor.flush()
        exit = wait_exit(executor)
        assert (exit.returncode, exit.reason) == (3, None)
        assert set(exit.log_truncated) == {"stdout:diskfull", "stderr:diskfull"}
        assert after.read_text() == "went-on\n"  # ran past the fill to its end
        out = (disk / "logs" / "out").read_bytes()
        assert out.endswith(FULL_MARKER)
        assert out.startswith(b"0123456789\n") and len(out) > 1_000_000
        assert exit.started_at is not None and exit.started_at < exit.ended_at
    finally:
        executor.close()


WAIT_FOR_GO = "while [ ! -e /data/go ]; do sleep 0.02; done; echo result; exit 0"


def usage_of(home: Path, run_id: str) -> list[tuple[float, datetime, datetime]]:
    """(wall seconds, start, end) of each usage row of the run, from the store itself."""
    from sqlalchemy import select

    from conftest import database_url_for
    from sylphx._server.store import UsageRow, make_engine

    engine = make_engine(database_url_for(home))
    try:
        with engine.connect() as db:
            rows = db.execute(
                select(UsageRow.wall_seconds, UsageRow.started_at, UsageRow.ended_at).where(
                    UsageRow.run_id == run_id
                )
            ).all()
    finally:
        engine.dispose()
    return [(float(w), s, e) for w, s, e in rows]


def _store_on(home: Path) -> bool:
    """Whether the store is a file in ``home`` (SQLite), so on its full disk: its passes
    cannot commit until there is room. A PostgreSQL store settles the exit at once."""
    from conftest import database_url_for

    return database_url_for(home).startswith("sqlite")


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _run_waiting(server: Any, home: Path) -> tuple[dict[str, Any], str, Path, datetime]:
    """Submit a shard that waits for /data/go and wait for it to run: returns
    the run, its volume's id, the attempt's state folder and the time now."""
    vol = server.http.post("/v1/volumes", json={"name": "out"}).json()["id"]
    run = server.submit(
        command=["sh", "-c", WAIT_FOR_GO],
        machine="nano",
        volumeMounts=[{"volumeId": vol, "mountPath": "/data"}],
    )
    state = home / "state" / run["id"] / "0.1"
    wait_file(state / "pid")
    filled = datetime.now(UTC)
    return run, vol, state, filled


def _check_settled(
    server: Any, home: Path, run_id: str, filled: datetime, before: datetime
) -> None:
    """The run succeeded; its one attempt exit 0, started before the disk filled, ended
    before ``before`` (the supervisor's record, not the settling's time), its stdout
    named as cut by the full disk, and billed its true window."""
    done = server.wait(run_id, timeout=60)
    assert done["status"] == "succeeded", done
    (shard,) = server.http.get(f"/v1/runs/{run_id}/shards").json()
    (attempt,) = shard["history"]
    assert (attempt["status"], attempt["exitCode"]) == ("succeeded", 0)
    start, end = _ts(attempt["startedAt"]), _ts(attempt["endedAt"])
    assert start < filled < end < before
    assert attempt["logTruncated"] == ["stdout:diskfull"] == shard["logTruncated"]
    ((wall, billed_start, billed_end),) = usage_of(home, run_id)
    assert wall == pytest.approx((end - start).total_seconds(), abs=0.01) and wall > 0
    assert (billed_start, billed_end) == (start, end)


def test_a_full_disk_under_a_live_control_plane_keeps_the_true_end_and_its_bill(
    tmp_path: Path, small_disk: Callable[[Path, str], Path]
) -> None:
    """SYLPHX_HOME (store, state, logs, volumes) on one small disk, sandboxed shards. The
    shard runs, the disk fills, the shard prints and exits 0: its supervisor records the
    end on the full disk; the store cannot commit it until space is freed, then it is
    settled as it really was."""
    from serverproc import ServerProcess

    home = small_disk(tmp_path / "home", "48m")
    server = ServerProcess(home)
    try:
        server.start()
        run, vol, state, filled = _run_waiting(server, home)
        filler = fill(home)
        (home / "volumes" / vol / "go").touch()  # an inode, no block: fits a full tmpfs
        wait_file(state / "exit")  # recorded by the supervisor, on the full disk
        recorded = datetime.now(UTC)
        time.sleep(2)  # passes fail to commit meanwhile (the store is on the full disk)
        if _store_on(home):
            assert server.get(run["id"])["status"] == "running"
        filler.unlink()
        _check_settled(server, home, run["id"], filled, recorded)
    finally:
        server.close()


def test_a_control_plane_killed_and_restarted_on_a_full_disk_records_the_true_end(
    tmp_path: Path, small_disk: Callable[[Path, str], Path]
) -> None:
    """As above, but the control plane is killed -9 once the disk is full, the shard ends
    while it is down, and a new one starts on the still-full disk (its store cannot
    commit) before space is freed. SYLPHX_SANDBOX=off: a sandboxed control plane cannot
    start on a full disk yet (it writes its seccomp filter at start-up)."""
    from serverproc import ServerProcess

    home = small_disk(tmp_path / "home", "48m")
    server = ServerProcess(home, SYLPHX_SANDBOX="off")
    try:
        server.start()
        run, vol, state, filled = _run_waiting(server, home)
        filler = fill(home)
        server.kill9()
        (home / "volumes" / vol / "go").touch()
        wait_file(state / "exit")
        down = datetime.now(UTC)
        server.start()  # healthy on the full disk; its passes cannot commit
        time.sleep(2)
        if _store_on(home):
            assert server.get(run["id"])["status"] == "running"
        filler.unlink()
        _check_settled(server, home, run["id"], filled, down)
    finally:
        server.close()


def test_a_submit_on_a_full_log_disk_is_refused_and_nothing_is_stored(
    tmp_path: Path,
    small_disk: Callable[[Path, str], Path],
    make_server: Callable[..., Any],
) -> None:
    """Whichever way its checks run -- a plain spec answered from the reconciler's fresh
    reading of the log disk, on the event loop; one naming a host path read in the thread
    pool -- a submit on a full log disk is a 503 naming the disk, and stores nothing;
    once there is room again, the next one is stored."""
    logs = small_disk(tmp_path / "home0" / "logs", "4m")  # (make_server's first home)
    server = make_server()
    assert server.settings.logs_dir == logs
    filler = fill(logs)
    plain = {"command": ["true"], "machine": "nano"}
    hosted = {**plain, "workingDir": str(tmp_path)}
    time.sleep(1.5)  # any reading at most a second old (docs/adr/0011) is of the full disk
    for spec in (plain, hosted, plain):
        refused = server.http.post("/v1/runs", json=spec)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "storage_full"
        assert f"the log disk at {logs} is full" in refused.json()["message"]
    assert server.http.get("/v1/runs").json()["items"] == []
    filler.unlink()
    deadline = time.monotonic() + 10
    while (answer := server.http.post("/v1/runs", json=plain)).status_code == 503:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)
    assert answer.status_code == 201, answer.text


def test_a_disk_watch_vouches_only_for_room_it_read_lately(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sylphx._core.errors import StorageFull
    from sylphx._server.infra import faults

    clock = [100.0]
    monkeypatch.setattr(faults.time, "monotonic", lambda: clock[0])
    watch = faults.DiskWatch(tmp_path, "log", fresh=1.0)
    assert not watch.roomy()  # never read
    watch.check()
    assert watch.roomy()
    clock[0] += 1.5
    assert not watch.roomy()  # stale: e.g. a hung mount stopped the passes
    monkeypatch.setattr(faults, "MIN_FREE_BYTES", 1 << 62)  # (no disk has that much)
    with pytest.raises(StorageFull, match=f"the log disk at {tmp_path} is full"):
        watch.check()
    assert not watch.roomy()  # full: whoever asks reads the disk itself
    monkeypatch.setattr(faults, "check_disk", lambda *_: None)  # room, read by a slow
    clock[0] -= 0.5  # read begun before the one that found it full, kept after it:
    watch.check()
    clock[0] += 0.6
    assert not watch.roomy()  # dropped (found by an attack review)
    watch.check()  # a newer one that finds room is kept
    assert watch.roomy()
