"""P2: gang admission latency, submit -> all 256 shards running (p50, p99 over 20 runs).

"Running" is measured at the process level, not from sylphx's own status: each attempt's
supervisor writes the shard's pid file right after ``posix_spawn`` returns, and its
modification time is when that shard's process existed. A round's latency is the last of
the 256 pid files' times minus the moment the client sent the submit (same host, same
clock). Shards run ``sleep 600`` and the run is cancelled after each round.

The baselines, measured in the same run, spawn the same 256 processes directly with
``os.posix_spawn`` (the supervisor's call), each in its own session, then kill them: from
one Python process, and split over one spawner process per CPU (forked before the clock
starts) -- the fastest this host starts 256 processes, and so the floor under sylphx, whose
supervisors also spawn on every core.

With ``--trace`` (the default; ``--no-trace`` turns it off) the servers write the bench's
marks (``reconciler_trace``, no change to sylphx) and it prints where a round's time goes,
phase by phase (medians over the rounds): from the submit to the handler, the submit's
transaction, the reconcile pass up to and through the launch loop, the hand-off to the
supervisors, and their spawning.

    python bench/p2_gang.py [--shards 256] [--rounds 20] [--no-trace]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

from harness import BENCH_HOMES, ENVELOPES, Server, machine, sandbox_argv, summary, table

SLEEP = ["sleep", "600"]
HERE = Path(__file__).resolve().parent


def direct(n: int, argv: list[str]) -> float:
    """Seconds to start ``n`` processes of ``argv`` from Python, each in its own session,
    with ``os.posix_spawn`` (the call sylphx's supervisor makes; ``subprocess.Popen``
    takes about half as long again per process)."""
    program = shutil.which(argv[0])
    assert program is not None
    start = time.perf_counter()
    pids = [os.posix_spawn(program, argv, dict(os.environ), setsid=True) for _ in range(n)]
    took = time.perf_counter() - start
    for pid in pids:
        os.killpg(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    return took


def direct_parallel(n: int, argv: list[str], spawners: int) -> float:
    """Seconds for ``spawners`` processes (one per CPU, forked before the clock starts, as
    sylphx's spare supervisors are) to start ``n`` processes of ``argv`` between them with
    ``os.posix_spawn``: the fastest this host starts them, every core spawning."""
    program = shutil.which(argv[0])
    assert program is not None
    env = dict(os.environ)
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    end_r, end_w = os.pipe()
    kids = []
    for k in range(spawners):
        share = n // spawners + (1 if k < n % spawners else 0)
        pid = os.fork()
        if pid == 0:  # a spawner: start its share on "go", kill them on "end"
            try:
                os.read(go_r, 1)
                pids = [os.posix_spawn(program, argv, env, setsid=True) for _ in range(share)]
                os.write(done_w, b"d")
                os.read(end_r, 1)
                for child in pids:
                    os.killpg(child, signal.SIGKILL)
                for child in pids:
                    os.waitpid(child, 0)
            finally:
                os._exit(0)
        kids.append(pid)
    start = time.perf_counter()
    os.write(go_w, b"g" * spawners)
    for _ in range(spawners):
        os.read(done_r, 1)
    took = time.perf_counter() - start
    os.write(end_w, b"e" * spawners)
    for pid in kids:
        os.waitpid(pid, 0)
    for fd in (go_r, go_w, done_r, done_w, end_r, end_w):
        os.close(fd)
    return took


def started(state: Path, run_id: str, n: int, timeout: float = 120) -> list[float]:
    """The start times (pid files' mtimes) of shards 0..n-1 of the run's first attempts,
    once all exist. Each poll stats only the shards not seen yet, so the waiting takes
    little of the CPU the supervisors are starting them on."""
    times: list[float] = []
    missing = [state / run_id / f"{i}.1" / "pid" for i in range(n)]
    deadline = time.monotonic() + timeout
    while missing:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {n - len(missing)} of {n} shards started in {timeout} s")
        time.sleep(0.02)
        still = []
        for path in missing:
            try:
                times.append(path.stat().st_mtime)
            except FileNotFoundError:
                still.append(path)
        missing = still
    return times


def gang_round(server: Server, n: int) -> tuple[float, list[float]]:
    """One gang of ``n``: when the client sent the submit, and when each shard started."""
    spec = {"command": SLEEP, "parallelism": n, "machine": "nano", "gangScheduling": True}
    sent = time.time()
    run_id = server.submit(**spec)
    times = started(server.home / "state", run_id, n)
    server.http.post(f"/v1/runs/{run_id}/cancel").raise_for_status()
    server.wait(run_id, poll=0.05)
    return sent, times


PHASES = (  # (what, the mark that ends it); each phase starts where the one before ended
    ("request reaches the submit handler (HTTP, auth, spec)", "submit_start"),
    ("submit: checks, run row and shard rows", "submit_end"),
    ("submit: commit", "commit"),
    ("reconciler wakes, pass reads the store, policies", "launch_start"),
    ("launch loop: attempts, requests, rows", "launch_end"),
    ("hand-off to the supervisors, first shard spawned", "first"),
    ("the other shards spawned", "last"),
)


def phases(marks: list[tuple[str, float]], sent: float, times: list[float]) -> list[float]:
    """The length of each of PHASES in one round (seconds), from the server's marks."""

    def matches(mark: str, name: str) -> bool:
        if name == "commit":  # the submit's: a commit on any thread but the reconciler's
            return mark.startswith("commit:") and mark != "commit:sylphx-reconciler"
        return mark == name

    def first(name: str, since: float) -> float:
        return min(t for mark, t in marks if t >= since and matches(mark, name))

    ends: dict[str, float] = {"first": min(times), "last": max(times)}
    for mark in ("submit_start", "submit_end", "commit"):
        ends[mark] = first(mark, ends.get("submit_start", sent))
    ends["launch_start"] = first("launch_start", ends["submit_end"])
    ends["launch_end"] = first("launch_end", ends["launch_start"])
    out, before = [], sent
    for _, mark in PHASES:
        end = max(before, ends[mark])
        out.append(end - before)
        before = end
    return out


def read_marks(path: Path) -> list[tuple[str, float]]:
    """The marks written so far (and start the file afresh)."""
    text = path.read_text() if path.exists() else ""
    path.write_text("")
    return [(name, float(t)) for name, t in (line.rsplit(" ", 1) for line in text.splitlines())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--trace",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also print the phase breakdown (default; --no-trace: the servers run unmarked)",
    )
    args = parser.parse_args()
    n = args.shards
    cpus = os.cpu_count() or 1
    print(f"P2 on {machine()}")
    rows, breakdown = [], {}
    for name, env in ENVELOPES.items():
        cap = {"SYLPHX_LOCAL_CPUS": str(n), "SYLPHX_LOCAL_MEMORY": f"{n}GiB"}
        cap["SYLPHX_KILL_GRACE_SECONDS"] = "0"
        marks = None
        if args.trace:
            marks = Path(tempfile.mkstemp(prefix="p2-marks-", dir=BENCH_HOMES)[1])
            cap |= {"PYTHONPATH": str(HERE / "reconciler_trace"), "SYLPHX_BENCH_MARKS": str(marks)}
        with Server(**cap, **env) as server:
            gang_round(server, n)  # warm-up
            argv = SLEEP if name == "plain" else sandbox_argv(SLEEP)
            ours, base, wide, split = [], [], [], []
            for _ in range(args.rounds):  # interleaved, each after the server went quiet
                server.quiesce()
                base.append(direct(n, argv))
                server.quiesce()
                wide.append(direct_parallel(n, argv, cpus))
                server.quiesce()
                if marks is not None:
                    read_marks(marks)  # drop what the warm-up and the cancel wrote
                sent, times = gang_round(server, n)
                ours.append(max(times) - sent)
                if marks is not None:
                    split.append(phases(read_marks(marks), sent, times))
        if marks is not None:
            marks.unlink()
        if split:
            breakdown[name] = [statistics.median(col) for col in zip(*split, strict=True)]
        o, b, w = summary(ours), summary(base), summary(wide)
        rows.append(
            [
                name,
                f"{b['median'] * 1e3:.0f} / {b['p99'] * 1e3:.0f}",
                f"{w['median'] * 1e3:.0f} / {w['p99'] * 1e3:.0f}",
                f"{o['median'] * 1e3:.0f} / {o['p99'] * 1e3:.0f}",
                f"{o['min'] * 1e3:.0f}-{o['max'] * 1e3:.0f}",
                f"{o['median'] / b['median']:.2f}x",
                f"{(o['median'] - w['median']) * 1e3:.0f}",
            ]
        )
    table(
        f"P2: gang of {n} (nano), submit -> all {n} processes started; ms over"
        f" {args.rounds} rounds; goal p50 < 100 ms",
        [
            "envelope",
            "direct, 1 spawner p50 / p99",
            f"direct, {cpus} spawners p50 / p99",
            "sylphx p50 / p99",
            "sylphx min-max",
            "sylphx / 1 spawner",
            f"sylphx - {cpus} spawners, ms",
        ],
        rows,
    )
    if breakdown:
        table(
            f"P2 --trace: where a sylphx round goes, ms (median of each phase over {args.rounds}"
            " rounds; the medians need not add up to the round's)",
            ["phase", *breakdown],
            [
                [what, *(f"{b[i] * 1e3:.1f}" for b in breakdown.values())]
                for i, (what, _) in enumerate(PHASES)
            ],
        )


if __name__ == "__main__":
    main()
