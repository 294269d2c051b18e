"""``sylphx runs timeline`` (issue #22 item 3): the layout (attempts -> bars, rows, cells,
ticks) table-driven on fixed times, the terminal and SVG renderings, then a real run on a
real control plane -- failures retried, opportunistic shards preempted by a gang, a merge
step -- drawn by the CLI: one SVG bar per attempt the API reports, one terminal row per
shard, no escape codes under NO_COLOR."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

from conftest import Server
from sylphx._cli.common import exit_code
from sylphx._cli.palette import PLAIN_GLYPHS
from sylphx._cli.timeline import draw, lines
from sylphx._cli.timeline_svg import render_svg
from sylphx._core import gantt
from sylphx._core.errors import NotFound
from sylphx._core.views import AttemptView, ShardView

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def shard(index: int, *attempts: tuple[str, float | None, float | None]) -> ShardView:
    """A shard whose attempts are (status, start, end) in seconds after T0."""
    history = [
        AttemptView(
            attempt=n,
            status=status,
            started_at=None if start is None else at(start),
            ended_at=None if end is None else at(end),
        )
        for n, (status, start, end) in enumerate(attempts, 1)
    ]
    return ShardView(index=index, status="succeeded", attempts=len(history), history=history)


def plain(cells: list[gantt.Cell]) -> str:
    return "".join(" " if c is None else PLAIN_GLYPHS[c] for c in cells)


# -- the layout, on fixed times ---------------------------------------------------------------

# (one shard's attempts, now, width) -> its row's cells over the timeline's span
CELLS = [
    pytest.param([("succeeded", 0, 10)], 10, 10, "==========", id="one-attempt-fills-the-span"),
    pytest.param([("succeeded", 2, 4), ("failed", 0, 10)], 10, 10, "xxxxxxxxxx", id="worst-wins"),
    pytest.param(
        [("failed", 0, 3), ("succeeded", 5, 10)], 10, 10, "xxx..=====", id="retry-after-a-gap"
    ),
    pytest.param(
        [("preempted", 0, 4), ("succeeded", 4, 10)], 10, 10, "pppp======", id="preempted-shows"
    ),
    pytest.param([("running", 5, None)], 20, 10, "  >>>>>>>>", id="running-extends-to-now"),
    pytest.param(
        [("failed", 0, 2), ("cancelled", None, None)], 10, 10, "xxxxxxxxxx", id="unstarted-no-bar"
    ),
    pytest.param([("succeeded", 0, 0.01)], 0.01, 4, "=", id="min-span-one-second"),
    pytest.param([("timed_out", 0, 0.1)], 10, 10, "t", id="a-blip-gets-one-cell"),
]


@pytest.mark.parametrize(("attempts", "now", "width", "expected"), CELLS)
def test_cells(attempts: list[Any], now: float, width: int, expected: str) -> None:
    timeline = gantt.build([shard(0, *attempts)], now=at(now), started_at=T0)
    assert len(timeline.bars) == sum(start is not None for _, start, _ in attempts)
    (row,) = gantt.rows(timeline)
    assert plain(gantt.cells(row, timeline.span, width)).rstrip() == expected


def test_build_scales_from_the_run_start_and_keeps_open_attempts_open() -> None:
    shards = [
        shard(1, ("failed", 2, 5), ("succeeded", 6, 9)),
        shard(0, ("running", 3, None)),
        shard(2, ("cancelled", None, None)),
    ]
    merge = shard(-1, ("succeeded", 12, 14))
    timeline = gantt.build(shards, merge, now=at(20), started_at=at(1))
    assert timeline.origin == at(1) and timeline.span == 19
    assert timeline.shards == (0, 1, 2, -1) and timeline.has_merge
    bars = [(b.shard, b.attempt, b.status.value, b.start, b.end, b.open) for b in timeline.bars]
    assert bars == [
        (0, 1, "running", 2, 19, True),
        (1, 1, "failed", 1, 4, False),
        (1, 2, "succeeded", 5, 8, False),
        (-1, 1, "succeeded", 11, 13, False),
    ]
    data = timeline.to_json()
    assert [a["endSeconds"] for a in data["attempts"]] == [None, 4, 8, 13]
    assert data["shards"] == [0, 1, 2] and data["merge"] is True
    # an attempt that started before the run's recorded start moves the origin back
    assert gantt.build(shards, now=at(20), started_at=at(4)).origin == at(2)


# (shards, merge, max_rows) -> row labels
ROWS = [
    pytest.param(4, False, None, ["0", "1", "2", "3"], id="one-per-shard"),
    pytest.param(4, True, 5, ["0", "1", "2", "3", "merge"], id="fits-with-merge"),
    pytest.param(4, True, 4, ["0-1", "2-3", "merge"], id="merge-keeps-its-row"),
    pytest.param(24, False, 8, ["0-2", "3-5", "6-8", "9-11", "12-14", "15-17", "18-20", "21-23"]),
    pytest.param(24, True, 8, ["0-3", "4-7", "8-11", "12-15", "16-19", "20-23", "merge"]),
    pytest.param(10, False, 3, ["0-3", "4-7", "8-9"], id="last-group-shorter"),
    pytest.param(256, False, 1, ["0-255"], id="all-in-one"),
]


@pytest.mark.parametrize(("n", "merge", "max_rows", "labels"), ROWS)
def test_rows_group_consecutive_shards_to_fit(
    n: int, merge: bool, max_rows: int | None, labels: list[str]
) -> None:
    shards = [shard(i, ("succeeded", i, i + 1)) for i in range(n)]
    step = shard(-1, ("succeeded", n, n + 1)) if merge else None
    timeline = gantt.build(shards, step, now=T0, started_at=T0)
    rows = gantt.rows(timeline, max_rows)
    assert [r.label for r in rows] == labels
    assert sum(len(r.bars) for r in rows) == n + merge


def test_a_group_row_shows_the_worst_outcome_and_counts_retries() -> None:
    shards = [
        shard(0, ("succeeded", 0, 10)),
        shard(1, ("preempted", 0, 4), ("succeeded", 4, 10)),
        shard(2, ("succeeded", 0, 6), ("failed", 6, 8)),  # (a failure policy's retry)
        shard(3, ("succeeded", 0, 10)),
    ]
    timeline = gantt.build(shards, now=T0, started_at=T0)
    first, second = gantt.rows(timeline, 2)
    assert plain(gantt.cells(first, timeline.span, 10)) == "pppp======"
    assert plain(gantt.cells(second, timeline.span, 10)) == "======xx=="
    assert (first.label, first.extra_attempts, first.preempted) == ("0-1", 1, 1)
    assert (second.label, second.extra_attempts, second.preempted) == ("2-3", 1, 0)


TICKS = [
    pytest.param(10, 100, 8, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], id="1s"),
    pytest.param(10, 40, 8, [0, 2, 4, 6, 8, 10], id="2s"),
    pytest.param(100, 60, 8, [0, 15, 30, 45, 60, 75, 90], id="15s"),
    pytest.param(3600, 80, 8, [0, 600, 1200, 1800, 2400, 3000, 3600], id="10m"),
    pytest.param(1, 50, 8, [0, 0.2, 0.4, 0.6, 0.8, 1], id="sub-second"),
]


@pytest.mark.parametrize(("span", "width", "gap", "expected"), TICKS)
def test_ticks_are_nice_and_spaced(
    span: float, width: int, gap: int, expected: list[float]
) -> None:
    got = gantt.ticks(span, width, gap)
    assert [t for _, t in got] == pytest.approx(expected)
    cols = [c for c, _ in got]
    assert cols[0] == 0 and cols == sorted(cols) and cols[-1] <= width - 1
    assert all(b - a >= gap - 1 for a, b in itertools.pairwise(cols))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "0.5s"),
        (45, "45s"),
        (120, "2m"),
        (150, "2m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
    ],
)
def test_fmt_seconds(seconds: float, text: str) -> None:
    assert gantt.fmt_seconds(seconds) == text


# -- the renderings, on fixed times ------------------------------------------------------------


def sample() -> gantt.Timeline:
    shards = [
        shard(0, ("succeeded", 0, 30)),
        shard(1, ("failed", 0, 5), ("preempted", 7, 12), ("succeeded", 12, 40)),
        shard(2, ("timed_out", 3, 20), ("running", 22, None)),
    ]
    return gantt.build(shards, shard(-1, ("cancelled", 41, 44)), now=at(45), started_at=T0)


def render(timeline: gantt.Timeline, **kwargs: Any) -> str:
    console = Console(
        record=True, width=kwargs["width"], force_terminal=True, color_system="standard"
    )
    draw(console, lines(timeline, title="wrk_x  running", **kwargs))
    return console.export_text(styles=True)


@pytest.mark.parametrize("width", [40, 72, 100, 200])
def test_the_terminal_chart_fits_the_width_and_plain_is_plain(width: int) -> None:
    out = render(sample(), width=width, color=False)
    assert "\x1b" not in out
    rows = out.splitlines()
    assert all(len(line) <= width for line in rows), rows
    labels = [line.split()[0] for line in rows[1:5]]
    assert labels == ["0", "1", "2", "merge"]
    assert rows[2].rstrip().endswith("+2") and rows[3].rstrip().endswith("+1")
    legend = " ".join(rows[7:])
    for entry in ("= succeeded", "x failed", "p preempted", "t timed out", "> running"):
        assert entry in legend
    assert rows[5].strip().startswith("+") and rows[6].split()[0] == "0s"


def test_the_colour_chart_is_styled_and_grouped_to_the_height() -> None:
    out = render(sample(), width=80, color=True, max_rows=3)
    assert "\x1b[" in out and "█" in out and "▒" in out
    plain_rows = Text.from_ansi(out).plain.splitlines()
    assert [line.split()[0] for line in plain_rows[1:4]] == ["0-1", "2", "merge"]


def test_the_svg_has_one_bar_per_attempt_with_its_data() -> None:
    timeline = sample()
    root = ET.fromstring(render_svg(timeline, title='run <"&"> one').encode())
    bars = [r for r in root.iter(f"{SVG}rect") if "data-attempt" in r.attrib]
    got = {(int(r.get("data-shard", "")), int(r.get("data-attempt", ""))): r for r in bars}
    assert len(got) == len(bars) == len(timeline.bars) == 7
    assert {k: r.get("data-status") for k, r in got.items()} == {
        (0, 1): "succeeded",
        (1, 1): "failed",
        (1, 2): "preempted",
        (1, 3): "succeeded",
        (2, 1): "timed_out",
        (2, 2): "running",
        (-1, 1): "cancelled",
    }
    assert got[(2, 2)].get("data-open") == "true" and got[(2, 2)].get("data-end") == "45.000"
    title = got[(1, 1)].find(f"{SVG}title")
    assert title is not None and title.text == "shard 1 · attempt 1 · failed · 0s → 5s (5s)"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert 'run <"&"> one' in texts and "merge" in texts and "preempted" in texts


# -- a real run, drawn by the CLI ---------------------------------------------------------------

# Each attempt marks that it started, waits for /o/go, then fails the first time it gets
# there (exit 3) and succeeds the next: so every index is retried once, and the two the
# gang preempts while they wait have a preempted attempt before that.
WAIT_THEN_FAIL_ONCE = (
    "i=$SYLPHX_SHARD_INDEX; touch /o/r-$i-$SYLPHX_SHARD_ATTEMPT;"
    " while [ ! -e /o/go ]; do sleep 0.1; done;"
    " [ -e /o/f-$i ] || { touch /o/f-$i; exit 3; }"
)


def sylphx(server: Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    full |= {"SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token, **env}
    return subprocess.run(
        [sys.executable, "-m", "sylphx", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def test_a_retried_and_preempted_run_drawn_by_the_cli(server: Server, tmp_path: Path) -> None:
    vol_id, vol = server.volume()
    run = server.submit(
        command=["sh", "-c", WAIT_THEN_FAIL_ONCE],
        parallelism=4,
        machine="small",  # 4 x 0.5 vCPU: the whole local capacity
        gangScheduling=False,
        backoffLimitPerIndex=1,
        retryBackoff={"initialSeconds": 0.5},
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/o"}],
        merge={"command": ["true"]},
    )
    server.wait_for(lambda: len(list(vol.glob("r-*-1"))) == 4, timeout=60)
    gang = server.submit(command=["sleep", "0.2"], parallelism=2, machine="small")
    assert server.wait(gang["id"])["status"] == "succeeded"
    (vol / "go").touch()
    done = server.wait(run["id"], timeout=90)
    assert done["status"] == "succeeded", done

    expected = {
        (s["index"], a["attempt"]): a["status"]
        for s in [*server.shards(run["id"]), done["merge"]]
        for a in s["history"]
        if a["startedAt"] is not None
    }
    statuses = sorted(expected.values())
    assert statuses.count("preempted") == 2 and statuses.count("failed") == 4, expected
    assert statuses.count("succeeded") == 5  # each index, and the merge step

    svg = tmp_path / "out.svg"
    got = sylphx(server, "runs", "timeline", run["id"], "--svg", str(svg))
    assert got.returncode == 0, got.stderr
    assert f"wrote {svg} ({len(expected)} attempts)" in got.stderr
    bars = [r for r in ET.parse(svg).getroot().iter(f"{SVG}rect") if "data-attempt" in r.attrib]
    drawn = {(int(r.attrib["data-shard"]), int(r.attrib["data-attempt"])): r for r in bars}
    assert len(bars) == len(drawn) == len(expected)  # exactly one bar per attempt
    assert {k: r.attrib["data-status"] for k, r in drawn.items()} == expected
    assert all(float(r.attrib["data-start"]) >= 0 for r in bars)

    text = sylphx(server, "runs", "timeline", run["id"], "--width", "100", "--no-color")
    assert text.returncode == 0, text.stderr
    out = text.stdout.splitlines()
    assert "\x1b" not in text.stdout and all(len(line) <= 100 for line in out)
    assert out[0].startswith(f"{run['id']}  succeeded · 4 shards · {len(expected)} attempts")
    assert [line.split()[0] for line in out[1:6]] == ["0", "1", "2", "3", "merge"]
    for line in out[1:5]:  # each index: a failure, the wait, then its success
        assert "x" in line and "." in line and "=" in line
    assert sum("p" in line.split()[1] for line in out[1:5]) == 2  # the two preempted
    assert "= succeeded" in text.stdout and "p preempted" in text.stdout

    # on a terminal (FORCE_COLOR): colour; NO_COLOR wins over it
    tty = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}
    coloured = sylphx(server, "runs", "timeline", run["id"], **tty)
    assert coloured.returncode == 0 and "\x1b[" in coloured.stdout and "█" in coloured.stdout
    bare = sylphx(server, "runs", "timeline", run["id"], **tty, NO_COLOR="1")
    assert bare.returncode == 0 and "\x1b" not in bare.stdout
    assert bare.stdout.splitlines()[1:6] == out[1:6]  # the same rows as --no-color

    grouped = sylphx(server, "runs", "timeline", run["id"], "--rows", "3", "--width", "60")
    assert [line.split()[0] for line in grouped.stdout.splitlines()[1:4]] == ["0-1", "2-3", "merge"]
    to_stdout = sylphx(server, "runs", "timeline", run["id"], "--svg", "-")
    assert to_stdout.stdout.startswith("<?xml") and to_stdout.stdout == svg.read_text()

    data = json.loads(sylphx(server, "runs", "timeline", run["id"], "--json").stdout)
    assert data["runId"] == run["id"] and data["merge"] is True
    assert {(a["shard"], a["attempt"]): a["status"] for a in data["attempts"]} == expected


def test_an_unknown_run_is_the_clis_not_found_error(server: Server) -> None:
    got = sylphx(server, "runs", "timeline", "wrk_doesnotexist")
    assert got.returncode == exit_code(NotFound("x")) != 0  # common.py's table
    assert got.stderr.startswith("error: run 'wrk_doesnotexist' not found") and not got.stdout
