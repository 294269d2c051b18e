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

import pytest

from sylphx._server.executors.base import Exit, LaunchRequest
from sylphx._server.executors.local import LocalExecutor
from sylphx._server.executors.shardlog import lost_marker

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
        wait_file(executor._dir(handle) / "pid")
        time.sleep(0.1)
        filled = datetime.now(UTC)
        fill(disk)
        go.touch()
        exit = wait_exit(executor)
        assert (exit.returncode, exit.reason) == (0, None)
        assert exit.started_at is not None and exit.started_at < filled < exit.ended_at
        assert exit.ended_at <= datetime.now(UTC)
        assert exit.log_truncated == ("stdout:diskfull",)  # "result" found no room
        assert (executor._dir(handle) / "exit").exists()  # renamed into place, full or not
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
