"""P2: gang admission latency, submit -> all 256 shards running (p50, p99 over 20 runs).

"Running" is measured at the process level, not from sylphx's own status: each attempt's
supervisor writes the shard's pid file right after ``posix_spawn`` returns, and its
modification time is when that shard's process existed. A round's latency is the last of
the 256 pid files' times minus the moment the client sent the submit (same host, same
clock). Shards run ``sleep 600`` and the run is cancelled after each round.

The baseline, measured in the same run, is spawning the same 256 processes directly
(``os.posix_spawn`` of the same argv, 256 times from one Python process, each in its own
session -- what the supervisor does -- then killing them).

    python bench/p2_gang.py [--shards 256] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import time
from pathlib import Path

from harness import ENVELOPES, Server, machine, summary, table

from sylphx._server.executors.sandbox import Sandbox

SLEEP = ["sleep", "600"]


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


def pid_files(state: Path, run_id: str) -> list[Path]:
    return list((state / run_id).glob("*.1/pid"))


def gang_round(server: Server, n: int) -> float:
    spec = {"command": SLEEP, "parallelism": n, "machine": "nano", "gangScheduling": True}
    state = server.home / "state"
    sent = time.time()
    run_id = server.submit(**spec)
    deadline = time.monotonic() + 120
    files = pid_files(state, run_id)
    while len(files) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(files)} of {n} shards started in 120 s")
        time.sleep(0.01)
        files = pid_files(state, run_id)
    last = max(f.stat().st_mtime for f in files)
    server.http.post(f"/v1/runs/{run_id}/cancel").raise_for_status()
    server.wait(run_id, poll=0.05)
    return last - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    n = args.shards
    print(f"P2 on {machine()}")
    rows = []
    for name, env in ENVELOPES.items():
        cap = {"SYLPHX_LOCAL_CPUS": str(n), "SYLPHX_LOCAL_MEMORY": f"{n}GiB"}
        cap["SYLPHX_KILL_GRACE_SECONDS"] = "0"
        with Server(**cap, **env) as server:
            gang_round(server, n)  # warm-up
            argv = SLEEP if name == "plain" else [*Sandbox().argv(), *SLEEP]
            ours, base = [], []
            for _ in range(args.rounds):
                server.quiesce()
                base.append(direct(n, argv))
                server.quiesce()
                ours.append(gang_round(server, n))
        o, b = summary(ours), summary(base)
        rows.append(
            [
                name,
                f"{b['median'] * 1e3:.0f} / {b['p99'] * 1e3:.0f}",
                f"{o['median'] * 1e3:.0f} / {o['p99'] * 1e3:.0f}",
                f"{o['min'] * 1e3:.0f}-{o['max'] * 1e3:.0f}",
                f"{o['median'] / b['median']:.2f}x",
            ]
        )
    table(
        f"P2: gang of {n} (nano), submit -> all {n} processes started; ms over"
        f" {args.rounds} rounds; goal p50 < 100 ms",
        ["envelope", "direct spawn p50 / p99", "sylphx p50 / p99", "sylphx min-max", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
