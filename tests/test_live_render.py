"""The live view's pieces, table-driven on fixed views (no server): the ETA, the grid,
the table, and a tenant's text staying text."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from sylphx._cli import live
from sylphx._core.views import RunView, ShardView

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def shard(index: int, status: str, *, took: float | None = None, ran: float | None = None,
          **extra: Any) -> ShardView:  # fmt: skip
    """A shard that ended after ``took`` seconds, or has been running for ``ran``."""
    fields: dict[str, Any] = {"index": index, "status": status, "attempts": 1, **extra}
    if took is not None:
        fields |= {"started_at": T0, "ended_at": T0 + timedelta(seconds=took)}
        fields |= {"duration_seconds": took, "exit_code": 0 if status == "succeeded" else 1}
    if ran is not None:
        fields |= {"started_at": T0 - timedelta(seconds=ran)}
    return ShardView.model_validate(fields)


def view(shards: list[ShardView], status: str = "running", **extra: Any) -> RunView:
    counts = {
        k: sum(s.status.value == k for s in shards)
        for k in ("succeeded", "failed", "running", "pending", "cancelled")
    }
    return RunView.model_validate(
        {
            "id": "wrk_test", "status": status, "created_at": T0,
            "spec": {"command": ["sh", "-c", "true"], "parallelism": max(1, len(shards)),
                     "gang_scheduling": False},
            "aggregate": {**counts, "timed_out": 0, "total": len(shards), "status": status},
            **extra,
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    ("shards", "slots", "expected"),
    [
        ([], 0, None),  # nothing finished: no basis
        ([shard(0, "succeeded", took=10), shard(1, "running", ran=4)], 0, 6.0),
        # 2 pending at 2 slots: one more wave of the median (10 s) after the running one
        (
            [
                shard(0, "succeeded", took=10),
                shard(1, "running", ran=4),
                shard(2, "running", ran=8),
                shard(3, "pending"),
                shard(4, "pending"),
            ],
            0,
            6.0 + 10.0,
        ),
        # nothing runs now, 4 pending, 2 ran at once before: two waves, not four
        ([shard(0, "succeeded", took=10), *(shard(i, "pending") for i in range(1, 5))], 2, 20.0),
        # nothing runs and nothing ever did: unknown
        ([shard(0, "succeeded", took=10), shard(1, "pending")], 0, None),
        ([shard(0, "succeeded", took=10), shard(1, "failed", took=2)], 0, 0.0),
    ],
)
def test_eta(shards: list[ShardView], slots: int, expected: float | None) -> None:
    assert live.eta(view(shards), shards, T0, slots) == expected


def test_eta_unknown_while_the_merge_step_runs() -> None:
    shards = [shard(0, "succeeded", took=3)]
    merging = view(shards, merge={"index": -1, "status": "running", "attempts": 1})
    assert live.eta(merging, shards, T0) is None


def _draw(run: RunView, shards: list[ShardView], width: int = 100, height: int = 30) -> str:
    console = Console(file=io.StringIO(), width=width, height=height, markup=False,
                      no_color=True, force_terminal=False)  # fmt: skip
    screen = live.LiveView(console)
    screen.update(run, shards)
    console.print(screen.draw(run, shards, T0, final=False))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_256_shards_draw_as_a_grid_of_256_cells_within_the_screen() -> None:
    shards = [shard(i, "succeeded", took=1) for i in range(100)]
    shards += [shard(i, "running", ran=2) for i in range(100, 120)]
    shards += [shard(i, "pending") for i in range(120, 255)] + [shard(255, "failed", took=1)]
    out = _draw(view(shards), shards)
    lines = out.splitlines()
    assert len(lines) <= 30 and all(len(line) <= 100 for line in lines)
    cells = "".join(line for line in lines if re.match(r"\s*\d+ [■▸·✗]", line))
    assert sum(cells.count(g) for g in "■▸·✗") == 256
    assert "120/256 ended" not in out and "101/256 ended" in out  # 100 succeeded + 1 failed


def test_a_small_run_draws_the_same_columns_as_off_a_terminal() -> None:
    shards = [shard(0, "succeeded", took=1.5), shard(1, "failed", took=2, reason="Error")]
    out = _draw(view(shards), shards)
    assert "INDEX  STATUS" in out.replace("   ", "  ") or "INDEX" in out
    for column in ("INDEX", "STATUS", "ATTEMPTS", "PREEMPTED", "EXIT", "DURATION", "REASON"):
        assert column in out


def test_a_tenants_reason_and_command_are_text_not_markup() -> None:
    nasty = "[/] [link=http://evil.example]x[/link] [bold red]boo"
    shards = [shard(0, "failed", took=1, reason=f"LaunchError: {nasty}")]
    run = view(shards, status="failed", message=nasty)
    out = _draw(run, shards, width=200)
    assert "[link=http://evil.example]" in out and "[/]" in out  # shown as typed
    assert "\x1b]8;" not in out  # no hyperlink escape


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_submit_that_pulls_an_image_shows_a_spinner_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sylphx._cli import run_cmd

    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    with run_cmd._waiting("oci:/images/train:v3"):
        time.sleep(0.3)
    assert "pulling and unpacking oci:/images/train:v3" in err.getvalue()
    quiet = io.StringIO()  # off a terminal: nothing
    monkeypatch.setattr("sys.stderr", quiet)
    with run_cmd._waiting("oci:/images/train:v3"):
        pass
    assert quiet.getvalue() == ""
