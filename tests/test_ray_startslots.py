"""A host starts a few sandboxes at a time, each only until its command runs (real
processes and bubblewrap; the Ray task body on this host, without a cluster).

100 sandboxed shards starting at once on the 2-core VM took 119-133 s (the kernel's
mount-namespace lock), 23-32 s at most 4 at a time (BENCHMARKS.md, P6).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sylphx._server.executors.base import LaunchRequest, Signal
from sylphx._server.executors.ray import startslots
from sylphx._server.executors.ray.remote import NodeEnvelope, run_streaming

pytestmark = pytest.mark.slow


def test_slots_bound_how_many_are_held_and_a_waiter_gets_the_first_given_back(
    tmp_path: Path,
) -> None:
    first, second = startslots.take(tmp_path, 2), startslots.take(tmp_path, 2)
    assert first is not None and second is not None
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(_timed_take(tmp_path)))
    waiter.start()
    time.sleep(0.5)
    assert got == []  # both held: it waits (blocked in flock, not spinning)
    first.release()
    waiter.join(timeout=10)
    assert got and got[0] >= 0.4
    second.release()


def _timed_take(folder: Path) -> float:
    start = time.monotonic()
    slot = startslots.take(folder, 2)
    assert slot is not None
    slot.release()
    return time.monotonic() - start


def test_no_private_folder_of_ours_means_no_bound(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert startslots.take(tmp_path / "file" / "slots", 1) is None
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # anyone could make the files and hold their locks
    assert startslots.take(shared, 1) is None
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    assert startslots.take(tmp_path / "link", 1) is None


def test_a_start_waits_at_most_its_patience_then_goes_ahead(tmp_path: Path) -> None:
    held = startslots.take(tmp_path, 1)
    assert held is not None
    start = time.monotonic()
    assert startslots.take(tmp_path, 1, patience=0.3) is None
    assert 0.3 <= time.monotonic() - start < 2
    held.release()


def test_wait_started_returns_when_the_command_runs_or_the_leader_ends(tmp_path: Path) -> None:
    chain = tmp_path / "bwrap"  # a process of the launch chain, as comm shows it
    chain.write_bytes(Path("/bin/sleep").read_bytes())
    chain.chmod(0o755)
    # the leader is of the chain too, as in a launch: a child it forked that has not
    # exec'd yet shows the leader's comm (a leader named `sh` made the test racy)
    shell = tmp_path / "setpriv"
    shell.write_bytes(Path("/bin/sh").resolve().read_bytes())
    shell.chmod(0o755)
    for argv, at_least, at_most in (
        ([str(chain), "30"], 0.9, 5.0),  # only the chain runs: held until `hold`
        (["sleep", "30"], 0.0, 0.9),  # the command runs: at once
        (["unshare", "--user", str(chain), "30"], 0.0, 0.9),  # a user namespace: up
    ):
        leader = subprocess.Popen(
            [str(shell), "-c", '"$@"; true', "sh", *argv], start_new_session=True
        )
        try:
            start = time.monotonic()
            startslots.wait_started(leader.pid, hold=1.0)
            took = time.monotonic() - start
            assert at_least <= took < at_most, (argv, took)
        finally:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait()
    quick = subprocess.Popen(["true"])
    quick.wait()
    start = time.monotonic()
    startslots.wait_started(quick.pid, hold=10)  # ended (and reaped): at once
    assert time.monotonic() - start < 1


def test_a_long_sandboxed_shard_holds_its_slot_for_its_start_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a single start slot, six sandboxed shards that each run 20 s all start within
    a few seconds: each gave its slot back once its command ran, not when it ended."""
    monkeypatch.setattr(startslots, "FOLDER", tmp_path / "slots")
    monkeypatch.setattr(startslots, "SLOTS_PER_CPU", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    envelope = NodeEnvelope(sandbox=True, enforce_tiers=False)
    started: list[float] = []
    stop = threading.Event()

    def ship(out: bytes, err: bytes) -> Signal | None:
        return "kill" if stop.is_set() else None

    def one(index: int) -> None:
        req = LaunchRequest(
            "wrk_slots", index, 1, 6, True, ["sleep", "20"], {}, "nano",
            f"{tmp_path}/{index}.out", f"{tmp_path}/{index}.err", None, network=False,
        )  # fmt: skip
        run_streaming(req, f"ray:wrk_slots:{index}:1", envelope, ship, on_start=started.append)

    begin = time.time()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 15
        while len(started) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(started) == 6, f"{len(started)} of 6 started"  # not one per 20 s
        assert max(started) - begin < 15
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)


def test_a_sandboxed_shard_sees_no_start_slot_to_hold(tmp_path: Path) -> None:
    """Attacked as a tenant would: the host's slots (and its cgroups) are out of reach of
    a sandboxed shard, so it cannot hold every slot and stall other tenants' starts."""
    taken = startslots.take()  # the host's folder exists, with a slot file in it
    if taken is None:
        pytest.skip("no private /dev/shm folder here")
    taken.release()
    probe = (
        f"ls {startslots.FOLDER} 2>&1; ls /dev/shm; ls /sys/fs/cgroup; "
        f"exec 9>{startslots.FOLDER}/0 && echo HELD"
    )
    req = LaunchRequest(
        "wrk_probe", 0, 1, 1, True, ["sh", "-c", probe], {}, "nano",
        f"{tmp_path}/out", f"{tmp_path}/err", None, network=False,
    )  # fmt: skip
    out: list[bytes] = []

    def ship(o: bytes, e: bytes) -> Signal | None:
        out.append(o + e)
        return None

    envelope = NodeEnvelope(sandbox=True, enforce_tiers=True)
    run_streaming(req, "ray:wrk_probe:0:1", envelope, ship)
    text = b"".join(out).decode()
    assert "No such file or directory" in text and "HELD" not in text, text
    assert "sylphx" not in text.replace(str(startslots.FOLDER), ""), text
