"""Terminal screenshots for the README, as PNG: a rich recording (or an ANSI capture, e.g.
``tmux capture-pane -e -p``) exported to SVG by rich, then rasterised by ``rsvg-convert``
(Debian: librsvg2-bin; ``make screenshots`` installs it when missing).

    python tools/screenshots.py demo -o docs/img/timeline.png   # a real run, drawn
    python tools/screenshots.py timeline wrk_... -o timeline.png  # an existing run
    python tools/screenshots.py ansi capture.txt -o live.png --width 100 --title "sylphx run"

From Python::

    from screenshots import ansi_to_png, console_to_png
    ansi_to_png(open("capture.txt").read(), "docs/img/live.png", width=100, title="sylphx")

The fonts are the machine's (rich's SVG asks for Fira Code from a CDN, which rsvg-convert
does not fetch): DejaVu Sans Mono first, whose advance rich's layout is told (0.602 em).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.ansi import AnsiDecoder
from rich.console import Console

FONT = "DejaVu Sans Mono"
FONT_ASPECT = 0.602  # DejaVu Sans Mono: advance / em
ZOOM = 1.5  # rasterise at 1.5x: crisp on high-density screens, still small files
SYLPHX = [sys.executable, "-m", "sylphx"]


def svg_to_png(svg: str | Path, png_path: str | Path, *, zoom: float = ZOOM) -> Path:
    """Rasterise an SVG (its text, or a file) to ``png_path`` with rsvg-convert."""
    exe = shutil.which("rsvg-convert")
    if exe is None:
        raise SystemExit("rsvg-convert not found: apt-get install librsvg2-bin (make screenshots)")
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    data = Path(svg).read_bytes() if isinstance(svg, Path) else svg.encode()
    subprocess.run([exe, "--zoom", str(zoom), "-o", str(png)], input=data, check=True)
    return png


def console_svg(console: Console, *, title: str) -> str:
    """A recording console's output as rich's terminal-window SVG, set in the local
    monospace font (clears the recording)."""
    svg = console.export_svg(title=title, font_aspect_ratio=FONT_ASPECT)
    svg = svg.replace("font-family: Fira Code, monospace", f"font-family: {FONT}, monospace")
    # rich writes spaces as &#160;, which librsvg collapses unless told to preserve them
    return svg.replace("<svg ", '<svg xml:space="preserve" ', 1)


def console_to_png(
    console: Console, png_path: str | Path, *, title: str, svg_path: str | Path | None = None
) -> Path:
    """Save what a ``Console(record=True, ...)`` printed as a PNG (and, if asked, the SVG)."""
    svg = console_svg(console, title=title)
    if svg_path is not None:
        Path(svg_path).write_text(svg, encoding="utf-8")
    return svg_to_png(svg, png_path)


def recording_console(width: int) -> Console:
    """A console that records what it prints, in colour, ``width`` columns wide."""
    return Console(
        record=True,
        width=width,
        force_terminal=True,
        color_system="truecolor",
        file=io.StringIO(),  # recorded, not shown
        highlight=False,
    )


def ansi_to_png(
    ansi_text: str,
    png_path: str | Path,
    width: int = 100,
    title: str = "sylphx",
    svg_path: str | Path | None = None,
) -> Path:
    """A capture with ANSI escape sequences (``tmux capture-pane -e -p``) as a PNG of a
    terminal window ``width`` columns wide; lines longer than that are cut."""
    console = recording_console(width)
    decoder = AnsiDecoder()  # one decoder: a style set on one line carries to the next
    for line in decoder.decode(ansi_text.rstrip("\n")):
        console.print(line, no_wrap=True, overflow="crop", crop=True)
    return console_to_png(console, png_path, title=title, svg_path=svg_path)


def timeline_to_png(
    run_id: str,
    png_path: str | Path,
    *,
    width: int = 100,
    url: str | None = None,
    svg_path: str | Path | None = None,
) -> Path:
    """``sylphx runs timeline RUN_ID`` as a PNG (url: the control plane; None: the
    embedded one of SYLPHX_HOME)."""
    from sylphx._cli.timeline import draw, heading, lines
    from sylphx._client.runs import RunsClient
    from sylphx._client.transport import create_client
    from sylphx._core.gantt import build

    config = create_client(url)
    try:
        run = RunsClient.get(config, run_id)
        view, shards = run.view, run.shards()
    finally:
        config.close()
    chart = build(shards, view.merge, now=datetime.now(UTC), started_at=view.started_at)
    console = recording_console(width)
    console.print(f"$ sylphx runs timeline {run_id}", style="bold", highlight=False)
    draw(console, lines(chart, width=width, color=True, title=heading(view, chart)))
    return console_to_png(console, png_path, title="sylphx runs timeline", svg_path=svg_path)


# -- demo: a real run on a throwaway local control plane ---------------------------------------

# Sleeps 1-4 s by index; indices 2, 8, 14, 20 fail their first attempt (a marker file on the
# volume remembers it), index 17 fails every attempt (its shard ends failed).
DEMO_COMMAND = (
    "i=$SYLPHX_SHARD_INDEX; sleep $(( (i * 7) % 4 + 1 ));"
    ' [ "$i" -eq 17 ] && exit 3;'
    " if [ $((i % 6)) -eq 2 ] && [ ! -e /m/failed-$i ]; then touch /m/failed-$i; exit 3; fi;"
    " exit 0"
)


def _sylphx(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*SYLPHX, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # 1: a followed run that did not (all) succeed
        raise SystemExit(f"sylphx {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def demo(png_path: str | Path, *, width: int = 100, svg_path: str | Path | None = None) -> Path:
    """Run 24 opportunistic shards (retries, one index failing for good, a merge step) on
    a new local control plane, preempt two of them with a gang run, draw the timeline."""
    home = tempfile.mkdtemp(prefix="sylphx-screenshots-")
    env = {k: v for k, v in os.environ.items() if k not in ("SYLPHX_URL", "SYLPHX_TOKEN")}
    # its own home and contexts (never the user's current one); 6 small shards at once
    env |= {"SYLPHX_HOME": home, "SYLPHX_CONFIG_DIR": f"{home}/config", "SYLPHX_LOCAL_CPUS": "3"}
    try:
        # start the control plane first: on a new home the very first request may find
        # its key not written yet ("missing API key"), so this one may fail
        subprocess.run([*SYLPHX, "runs", "list"], env=env, capture_output=True, check=False)
        vol = json.loads(_sylphx(env, "volumes", "create", "--name", "marks", "--json"))["id"]
        run_id = _sylphx(
            env,
            *("run", "-n", "24", "--opportunistic", "--backoff-limit-per-index", "2"),
            *("--machine", "small", "--volume", f"{vol}:/m", "--retry-backoff", "1"),
            *("--merge-command", "true", "--merge-when", "always"),
            *("--", "sh", "-c", DEMO_COMMAND),
        ).split()[0]
        time.sleep(5)  # a gang run now needs room: two running shards are preempted
        _sylphx(env, "run", "-n", "2", "--machine", "small", "--follow", "--", "sleep", "2")
        while json.loads(_sylphx(env, "runs", "get", run_id, "--json"))["status"] in (
            "queued",
            "running",
        ):
            time.sleep(0.5)
        os.environ.clear()
        os.environ.update(env)  # this process reads the run from the same control plane
        return timeline_to_png(run_id, png_path, width=width, svg_path=svg_path)
    finally:
        _sylphx(env, "local", "stop")
        shutil.rmtree(home, ignore_errors=True)


LIVE_COMMAND = 'sleep 0.$(( (SYLPHX_SHARD_INDEX * 7) % 9 + 1 )); [ "$SYLPHX_SHARD_INDEX" -ne 77 ]'


def _capture(socket: str, *args: str) -> str:
    cmd = ["tmux", "-L", socket, "capture-pane", "-p", "-t", "s", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def live(png_path: str | Path, final_png: str | Path, *, width: int = 100) -> list[Path]:
    """``sylphx run -n 256 ... --follow`` in a real terminal (tmux, 30 x ``width``) on a
    throwaway local control plane: the screen half-way through, and at the end."""
    home = tempfile.mkdtemp(prefix="sylphx-screenshots-")
    socket = f"sylphx-shot-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in ("SYLPHX_URL", "SYLPHX_TOKEN")}
    env |= {"SYLPHX_HOME": home, "SYLPHX_CONFIG_DIR": f"{home}/config", "TERM": "tmux-256color"}
    run = [*SYLPHX, "run", "-n", "256", "--machine", "nano", "--opportunistic"]
    run += ["--backoff-limit-per-index", "1", "--follow", "--", "sh", "-c", LIVE_COMMAND]
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.isidentifier())
    script = f"cd /tmp && env {exports} {shlex.join(run)}; echo; sleep 600"
    try:
        subprocess.run([*SYLPHX, "runs", "list"], env=env, capture_output=True, check=False)
        subprocess.run(
            ["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "s", "-x",
             str(width), "-y", "30", "sh", "-c", script], check=True,
        )  # fmt: skip
        middle = ""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            screen = _capture(socket)
            if "256/256 ended" in screen:
                break
            ended = re.search(r"(\d+)/256 ended", screen)
            if not middle and ended and 90 <= int(ended.group(1)) <= 170:
                middle = _capture(socket, "-e")
            time.sleep(0.2)
        time.sleep(0.5)
        final = _capture(socket, "-e")
        return [
            ansi_to_png(middle.rstrip("\n"), png_path, width, "sylphx run -n 256 --follow"),
            ansi_to_png(final.rstrip("\n") + "\n ", final_png, width, "sylphx run -n 256 --follow"),
        ]
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
        _sylphx(env, "local", "stop")
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name, helptext in (
        ("demo", "a real 24-shard run on a throwaway local control plane, as a timeline"),
        ("timeline", "an existing run's timeline (SYLPHX_URL/SYLPHX_TOKEN or the local one)"),
        ("ansi", "a file of ANSI text (- for stdin), e.g. from tmux capture-pane -e -p"),
        ("live", "a real 256-shard --follow in tmux: mid-run (-o) and the end (--final)"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        if name == "timeline":
            cmd.add_argument("run_id")
        if name == "ansi":
            cmd.add_argument("file")
            cmd.add_argument("--title", default="sylphx")
        if name == "live":
            cmd.add_argument("--final", required=True, help="the PNG of the end")
        cmd.add_argument("-o", "--output", required=True, help="the PNG to write")
        cmd.add_argument("--svg", help="also keep the SVG here")
        cmd.add_argument("--width", type=int, default=100, help="terminal columns")
    args = parser.parse_args(argv)
    if args.what == "demo":
        out = demo(args.output, width=args.width, svg_path=args.svg)
    elif args.what == "live":
        out = live(args.output, args.final, width=args.width)[0]
    elif args.what == "timeline":
        url = os.environ.get("SYLPHX_URL")
        out = timeline_to_png(
            args.run_id, args.output, width=args.width, url=url, svg_path=args.svg
        )
    else:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        out = ansi_to_png(text, args.output, args.width, args.title, args.svg)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
