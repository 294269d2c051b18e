"""The Ray task body (``run_streaming``) on this host, without a cluster: real processes,
the envelope Ray shards get when the operator turned the sandbox off."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from sylphx._server.executors.base import LaunchRequest, Signal
from sylphx._server.executors.local.shardlog import marker
from sylphx._server.executors.ray import remote as ray_remote
from sylphx._server.executors.ray.remote import NodeEnvelope, run_shard, run_streaming

PLAIN = NodeEnvelope(sandbox=False, enforce_tiers=False)
# Prints the parent-death signal the shard runs with (prctl PR_GET_PDEATHSIG = 2).
PDEATHSIG = (
    "import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"
)


def request(tmp_path: Path, command: list[str]) -> LaunchRequest:
    return LaunchRequest(
        "run1", 0, 1, 1, True, command, {}, "nano", f"{tmp_path}/out", f"{tmp_path}/err", None
    )


def run(
    tmp_path: Path, command: list[str], envelope: NodeEnvelope = PLAIN
) -> tuple[tuple[int, str | None, list[str]], bytes, int]:
    """(result, all stdout shipped, number of ships)."""
    shipped: list[bytes] = []

    def ship(out: bytes, err: bytes) -> Signal | None:
        shipped.append(out)
        return None

    result = run_streaming(request(tmp_path, command), "ray:run1:0:1", envelope, ship)
    return result, b"".join(shipped), len(shipped)


def test_shard_dies_with_the_worker_that_started_it(tmp_path: Path) -> None:
    result, out, _ = run(tmp_path, [sys.executable, "-c", PDEATHSIG])
    assert result == (0, None, [])
    assert out.strip() == b"9"  # SIGKILL


def test_silent_quick_shard_ships_nothing_and_its_scratch_is_removed(tmp_path: Path) -> None:
    result, _, ships = run(tmp_path, ["true"])
    assert result == (0, None, []) and ships == 0
    result, out, _ = run(tmp_path, ["pwd"])
    scratch = Path(out.decode().strip())
    assert result == (0, None, []) and scratch.name.startswith("sylphx-scratch-")
    assert not scratch.exists()


def test_missing_program_is_refused_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run(tmp_path, ["no-such-program-sylphx"])


def test_shipping_never_blocks_the_tasks_main_thread_in_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A blocking ray.get on a task's main thread makes Ray lend the task's CPU to other
    # tasks while the shard still runs on it: every wait for the log hub is off that thread.
    pushed: list[bytes] = []
    on_main: list[bool] = []
    started: list[float] = []

    class Hub:
        class push:  # stands in for an actor method; the first chunk tells the start
            @staticmethod
            def remote(
                handle: str, node: str, paths: Any, out: bytes, err: bytes, start: float | None
            ) -> str:
                pushed.append(out)
                started.extend([start] if start is not None else [])
                return "ref"

    def get(ref: str) -> None:
        on_main.append(threading.current_thread() is threading.main_thread())

    context = type("Context", (), {"get_node_id": lambda self: "node-1"})()
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(ray, "get_actor", lambda name: Hub())
    monkeypatch.setattr(ray_remote, "_hubs", {})  # the fake hub is not cached for others
    monkeypatch.setattr(ray, "get", get)
    req = request(tmp_path, ["sh", "-c", "echo one; sleep 0.5; echo two"])
    before = time.time()
    code, reason, cut, began, ended = run_shard(req, "ray:run1:0:1", "hub-test", PLAIN)
    assert (code, reason, cut) == (0, None, [])
    # the window the node measured: from the process's spawn (told to the hub once, with
    # the first chunk, while it ran) to the end
    assert started == [began] and before <= began <= ended - 0.5 <= time.time()
    assert b"".join(pushed) == b"one\ntwo\n"
    assert on_main and not any(on_main)


def test_a_shard_that_ends_before_its_first_chunk_costs_the_hub_no_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short, silent shard tells its start with its result: no push, no call of its own
    # (one hub call and one control-plane pass fewer per shard: P6).
    calls: list[str] = []

    class Hub:
        class push:
            @staticmethod
            def remote(*args: Any) -> str:
                calls.append("push")
                return "ref"

    context = type("Context", (), {"get_node_id": lambda self: "node-1"})()
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(ray, "get_actor", lambda name: Hub())
    monkeypatch.setattr(ray_remote, "_hubs", {})
    monkeypatch.setattr(ray, "get", lambda ref: None)
    before = time.time()
    code, reason, cut, began, ended = run_shard(
        request(tmp_path, ["true"]), "ray:run1:0:1", "hub-test", PLAIN
    )
    assert (code, reason, cut, calls) == (0, None, [], [])
    assert began is not None and before <= began <= ended <= time.time()


def test_shipped_output_is_redacted_and_capped_as_on_the_local_executor(tmp_path: Path) -> None:
    """The same shardlog code as the local supervisor: a secret value split across writes
    never leaves the node, and output past the cap is dropped behind the marker line."""
    script = (
        "printf %s hunter; sleep 0.5; printf '%s\\n' 2-Zq8;"  # a chunk edge mid-value
        " head -c 100000 /dev/zero; echo done >&2"
    )
    req = LaunchRequest(
        "run1", 0, 1, 1, True, ["sh", "-c", script], {}, "nano", f"{tmp_path}/out",
        f"{tmp_path}/err", None, secrets={"TOKEN": "hunter2-Zq8"},
    )  # fmt: skip
    out: list[bytes] = []
    err: list[bytes] = []

    def ship(o: bytes, e: bytes) -> Signal | None:
        out.append(o)
        err.append(e)
        return None

    envelope = NodeEnvelope(sandbox=False, enforce_tiers=False, max_log_bytes=4096)
    assert run_streaming(req, "ray:run1:0:1", envelope, ship) == (0, None, ["stdout"])
    assert b"".join(out) == (b"***\n" + b"\0" * 100_000)[:4096] + marker(4096)
    assert b"".join(err) == b"done\n"
