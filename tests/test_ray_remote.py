"""The Ray task body (``run_streaming``) on this host, without a cluster: real processes,
the envelope Ray shards get when the operator turned the sandbox off."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sylphx._server.executors.base import LaunchRequest, Signal
from sylphx._server.executors.ray_remote import NodeEnvelope, run_streaming

PLAIN = NodeEnvelope(sandbox=False, enforce_tiers=False)
# Prints the parent-death signal the shard runs with (prctl PR_GET_PDEATHSIG = 2).
PDEATHSIG = (
    "import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"
)


def request(tmp_path: Path, command: list[str]) -> LaunchRequest:
    return LaunchRequest(
        "run1", 0, 1, 1, True, command, {}, "nano", tmp_path / "out", tmp_path / "err", None
    )


def run(
    tmp_path: Path, command: list[str], envelope: NodeEnvelope = PLAIN
) -> tuple[tuple[int, str | None], bytes, int]:
    """(result, all stdout shipped, number of ships)."""
    shipped: list[bytes] = []

    def ship(out: bytes, err: bytes) -> Signal | None:
        shipped.append(out)
        return None

    result = run_streaming(request(tmp_path, command), "ray:run1:0:1", envelope, ship)
    return result, b"".join(shipped), len(shipped)


def test_shard_dies_with_the_worker_that_started_it(tmp_path: Path) -> None:
    result, out, _ = run(tmp_path, [sys.executable, "-c", PDEATHSIG])
    assert result == (0, None)
    assert out.strip() == b"9"  # SIGKILL


def test_sandboxed_shard_dies_with_the_worker_through_bwrap(tmp_path: Path) -> None:
    # No setpriv exec in front: bwrap's --die-with-parent sets the same signal.
    sandboxed = NodeEnvelope(sandbox=True, enforce_tiers=False)
    result, out, _ = run(tmp_path, [sys.executable, "-c", PDEATHSIG], sandboxed)
    assert result == (0, None)
    assert out.strip() == b"9"  # SIGKILL


def test_silent_quick_shard_ships_nothing_and_its_scratch_is_removed(tmp_path: Path) -> None:
    result, _, ships = run(tmp_path, ["true"])
    assert result == (0, None) and ships == 0
    result, out, _ = run(tmp_path, ["pwd"])
    scratch = Path(out.decode().strip())
    assert result == (0, None) and scratch.name.startswith("sylphx-scratch-")
    assert not scratch.exists()


def test_missing_program_is_refused_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run(tmp_path, ["no-such-program-sylphx"])
