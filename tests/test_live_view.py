"""``--follow`` as a person sees it: the real CLI in a real terminal (tmux), asserted on
what the screen shows (``capture-pane``); and off a terminal, what a log file gets."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Server

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (make system-deps)")

# shard 7 fails; the others sleep a little, so the run lasts a few waves
SHARD = 'sleep 0.$((SYLPHX_SHARD_INDEX % 4)); [ "$SYLPHX_SHARD_INDEX" -ne 7 ]'
ENDED = re.compile(r"(\d+)/(\d+) ended")
SGR_COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|38;[0-9;]+|9[0-7])m")


class Terminal:
    """A tmux session of its own (its own server socket) running one command."""

    def __init__(self, socket: str, width: int, height: int) -> None:
        self.socket, self.width, self.height = socket, width, height

    def tmux(self, *args: str) -> str:
        got = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        return got.stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = f"env {exports} {command}; echo EXIT=$?; sleep 600"
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(self.width),
                  "-y", str(self.height), "sh", "-c", script)  # fmt: skip
        self.tmux("set-option", "-t", "t", "history-limit", "10000")

    def screen(self, *, colour: bool = False) -> str:
        """What the pane shows now, wrapped lines joined (so a wrap shows as a long line)."""
        return self.tmux("capture-pane", "-p", "-J", *(["-e"] if colour else []), "-t", "t")

    def history(self) -> str:
        """Everything the pane ever showed, scrollback included."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t")

    def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    socket = f"sylphx-test-{os.getpid()}-{time.monotonic_ns()}"
    term = Terminal(socket, 100, 30)
    yield term
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def _cli_env(server: Server, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token, "TERM": "tmux-256color",
        "LANG": "C.UTF-8", **extra,
    }  # fmt: skip


def _sylphx(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "sylphx", *args])


def _width(line: str) -> int:
    from rich.cells import cell_len

    return cell_len(line.rstrip())


def _watch(term: Terminal, *, resize_at: int | None = None) -> list[str]:
    """Screens captured until the command ended; checks each one as it comes."""
    screens: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        screen = term.screen()
        if "EXIT=" in screen:
            return screens
        lines = screen.splitlines()
        if any(ENDED.search(line) for line in lines):
            screens.append(screen)
            # the header is on screen, once: no stale copy of a redraw above or below it
            assert sum(bool(ENDED.search(line)) for line in lines) == 1, screen
            assert lines[0].startswith("wrk_"), screen  # the run's own line stays on top
            assert any("succeeded" in line for line in lines[:6]), screen  # the counts
            assert all(_width(line) <= term.width for line in lines), screen  # no wraps
            assert len(lines) <= term.height, screen
        if resize_at is not None and len(screens) == resize_at:
            term.resize(80, 24)
        time.sleep(0.25)
    raise AssertionError(f"the run did not end in time; last screen:\n{term.screen()}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [(100, 30), (200, 60)], ids=["30x100", "60x200"])
def test_256_shards_header_stays_no_stale_lines_final_summary(
    server: Server, terminal: Terminal, size: tuple[int, int]
) -> None:
    terminal.width, terminal.height = size
    cmd = _sylphx("run", "-n", "256", "--machine", "nano", "--opportunistic",
                  "--backoff-limit-per-index", "1", "--retry-backoff", "0.5", "--follow",
                  "--", "sh", "-c", SHARD)  # fmt: skip
    terminal.start(cmd, _cli_env(server))
    screens = _watch(terminal, resize_at=4 if size == (100, 30) else None)
    assert len(screens) >= 3, "the live view was not seen while the run went on"
    progress = [int(m.group(1)) for s in screens if (m := ENDED.search(s))]
    assert progress == sorted(progress) and progress[0] < 256
    # a run of 256 never fits as a table: the grid, one cell per shard
    middle = screens[len(screens) // 2]
    assert not re.search(r"^INDEX\s+STATUS", middle, re.M) and "■" in middle
    rows = [line for line in middle.splitlines() if re.match(r"\s*\d+ [■▸▹·✗◷⊘]", line)]
    assert sum(line.count(c) for line in rows for c in "■▸▹·✗◷⊘") == 256, middle

    final = terminal.screen()
    run_id = final.split()[0]
    assert run_id.startswith("wrk_"), final
    assert "256/256 ended" in final and "partial" in final and "EXIT=1" in final
    assert "255 succeeded" in final and "1 failed" in final
    assert f"sylphx runs logs {run_id} --shard 7 --stderr" in final
    assert f"sylphx runs retry {run_id} --failed --follow" in final
    # everything the terminal ever showed: the live view left no copies behind
    history = terminal.history()
    assert history.count("/256 ended") == 1, history
    assert history.count("waiting for capacity") <= 1, history


@pytest.mark.timeout(300)
def test_a_queued_gang_shows_its_position_and_why(server: Server, terminal: Terminal) -> None:
    cpus = server.plane.executor.capacity().millicpu // 1000
    blocker = server.submit(command=["sleep", "60"], parallelism=cpus - 1, machine="standard")
    server.wait_for(lambda: server.get(blocker["id"])["status"] == "running")
    cmd = _sylphx("run", "-n", "2", "--machine", "standard", "--follow", "--", "true")
    terminal.start(cmd, _cli_env(server))
    deadline = time.monotonic() + 60
    while "queue position 1" not in (screen := terminal.screen()):
        assert time.monotonic() < deadline, screen
        time.sleep(0.2)
    assert "needs 2 vCPU / 4 GiB at once" in screen, screen
    assert screen.splitlines()[0].startswith("wrk_") and "queued" in screen.splitlines()[0]
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    _watch(terminal)
    final = terminal.screen()
    assert "2/2 ended" in final and "succeeded" in final and "EXIT=0" in final


@pytest.mark.timeout(300)
def test_a_small_run_shows_its_table_in_colour(server: Server, terminal: Terminal) -> None:
    cmd = _sylphx("run", "-n", "12", "--machine", "nano", "--follow", "--", "sh", "-c", SHARD)
    terminal.start(cmd, _cli_env(server))
    _watch(terminal)
    final = terminal.screen()
    table = [
        line for line in final.splitlines() if re.match(r"\s*\d+\s+\S\s+(succeeded|failed)", line)
    ]
    assert len(table) == 12, final
    # index, status, attempts, preempted, exit
    assert re.search(r"7\s+✗ failed\s+1\s+0\s+1\s", final), final
    assert "12/12 ended" in final and "partial" in final and "EXIT=1" in final
    coloured = terminal.tmux("capture-pane", "-p", "-e", "-S", "-", "-t", "t")
    assert SGR_COLOUR.search(coloured), "no colour on a colour terminal"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["NO_COLOR", "--no-color"])
def test_no_color_draws_without_colour(server: Server, terminal: Terminal, how: str) -> None:
    extra = {"NO_COLOR": "1"} if how == "NO_COLOR" else {}
    flags = ["--no-color"] if how == "--no-color" else []
    cmd = _sylphx("run", "-n", "4", "--machine", "nano", *flags, "--follow", "--", "true")
    terminal.start(cmd, _cli_env(server, **extra))
    _watch(terminal)
    coloured = terminal.tmux("capture-pane", "-p", "-e", "-S", "-", "-t", "t")
    assert "4/4 ended" in coloured and "EXIT=0" in coloured
    assert not SGR_COLOUR.search(coloured), coloured


def test_off_a_terminal_timestamped_batches_under_two_lines_a_shard(
    server: Server, tmp_path: Path
) -> None:
    env = dict(os.environ, SYLPHX_URL=server.url, SYLPHX_TOKEN=server.token)
    got = subprocess.run(
        [sys.executable, "-m", "sylphx", "run", "-n", "256", "--machine", "nano",
         "--opportunistic", "--backoff-limit-per-index", "0", "--follow", "--", "sh", "-c", SHARD],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert got.returncode == 1, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].startswith("wrk_") and len(lines) < 2 * 256, got.stdout
    stamped = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  ", line)]
    assert len(stamped) >= 2
    # never a line per pending shard: "pending" only in the batches' counts
    assert not [line for line in lines if re.search(r"shard \d+: (attempt \d+ \()?pending", line)]
    assert any("shard 7: failed" in line for line in stamped), got.stdout
    assert not any("\x1b[" in line for line in lines)
    assert "partial" in lines[-1] and "255/256 succeeded" in lines[-1]
