"""P5: N shards of ``true`` spread over 40 runs; control-plane RSS and time per shard.

For each N (default 100, 1,000 and 10,000) a fresh ``sylphx server`` subprocess (SQLite,
local executor) gets 40 opportunistic nano runs whose sizes add up to exactly N (N=100:
20 runs of 3 and 20 of 2; N=10,000: 40 of 250). The client submits all 40 back to back,
then waits until every one is terminal, and reports:

- wall: first submit -> the client sees the last run terminal;
- time per shard: wall / N, and its ratio to the smallest N (flat = 1.0);
- the server's RSS: before the submits, exact peak over the phase (VmHWM) and at the end;
- the server's CPU seconds over the phase (CPU s / shard is the control plane's cost,
  less sensitive to other load on the machine than wall time);
- how long the 40 submits took (each POST waits for the store's write lock, which every
  reconciler pass holds from its first read to its commit).

Capacity is raised (SYLPHX_LOCAL_CPUS=256, SYLPHX_LOCAL_MEMORY=256GiB), so at most 1,024
nano shards (256 MiB each) run at once; the org's concurrent-shard budget (100,000) never
binds. A shard of ``true`` ends within milliseconds, so the active set stays far below N:
this measures throughput. ``--steady N`` measures the other regime: N shards of
``sleep 3600`` over 40 runs (1,024 of them running, the rest pending), held for ``--hold``
seconds, so every pass loads all N shards; then all 40 runs are cancelled.

Polling: one ``GET /v1/runs?limit=200`` (all 40 runs and their aggregates, one SQL query
for the runs and one GROUP BY over the shards) every ``--poll`` seconds (0.1), rather than
``GET /v1/runs/{id}`` per run every 5 ms as P1 does: 40 runs polled like P1 would be 8,000
requests a second against the API, whose threads share the server process (and its GIL)
with the reconciler under test, on a 2-core machine. One list request per 0.1 s costs the
server a few ms a second; the price is a 0.1 s resolution on the wall time.

Envelope: ``plain`` (SYLPHX_SANDBOX=off, SYLPHX_UNENFORCED_TIERS=1) measures the control
plane, not bubblewrap and cgroups; ``--sandboxed N`` adds a row with the production
default envelope at that N (default 1,000; 0 to skip).

``--trace DIR`` runs the servers with ``reconciler_trace`` (per-pass timings of each step
of the reconciler, one JSON line per pass; SYLPHX_BENCH_GC_* are passed on to it) and prints
a table of them; ``--profile`` also
records each server with py-spy (``DIR/*.txt``, read with reconciler_trace/pyspy_report.py).

    python bench/p5_scale.py [--sizes 100,1000,10000] [--runs 40] [--sandboxed 1000]
        [--steady 10000 --hold 30] [--trace DIR [--profile]]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import TERMINAL, Server, machine, table
from sampling import MB, Phase

HERE = Path(__file__).resolve().parent
PLAIN = {"SYLPHX_SANDBOX": "off", "SYLPHX_UNENFORCED_TIERS": "1"}
CAPACITY = {"SYLPHX_LOCAL_CPUS": "256", "SYLPHX_LOCAL_MEMORY": "256GiB"}
STEADY_SETTLE_SECONDS = 5.0  # after the last submit, before passes count as steady


def split(total: int, runs: int) -> list[int]:
    """``runs`` run sizes adding up to ``total``, as even as possible (larger first)."""
    q, r = divmod(total, runs)
    return [q + 1] * r + [q] * (runs - r)


def sizes_text(sizes: list[int]) -> str:
    return f"{sizes[0]}" if len(set(sizes)) == 1 else f"{sizes[-1]}-{sizes[0]}"


def wait_all(server: Server, ids: set[str], *, poll: float, timeout: float) -> list[Any]:
    """Poll the run list until every run in ``ids`` is terminal; returns their views."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = server.http.get("/v1/runs", params={"limit": 200}).json()["items"]
        mine = [r for r in items if r["id"] in ids]
        if len(mine) == len(ids) and all(r["status"] in TERMINAL for r in mine):
            return mine
        time.sleep(poll)
    raise RuntimeError(f"runs not terminal after {timeout}s")


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` (raw collapsed stacks, thread names) until SIGINT."""
    exe = Path(sys.executable).with_name("py-spy")
    argv = [str(exe), "record", "--pid", str(pid), "--format", "raw", "--threads"]
    argv += ["--rate", "100", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def traced_server(
    env: dict[str, str], trace: Path | None, profile: bool
) -> Iterator[tuple[Server, Path | None]]:
    """A warmed-up server (with the reconciler trace when ``trace``); yields it and the
    trace's JSONL path, emptied after the warm-up. py-spy runs while the block does."""
    extra, jsonl = {}, None
    if trace is not None:
        jsonl = trace.with_suffix(".jsonl")
        extra = {"PYTHONPATH": str(HERE / "reconciler_trace"), "SYLPHX_BENCH_TRACE": str(jsonl)}
        extra |= {k: v for k, v in os.environ.items() if k.startswith("SYLPHX_BENCH_GC_")}
    with Server(**CAPACITY, **env, **extra) as server:
        server.wait(server.submit(command=["true"], machine="nano"))  # warm-up
        if jsonl is not None:
            jsonl.write_text("")  # drop the warm-up's passes (the server appends)
        spy = py_spy(server.proc.pid, trace.with_suffix(".txt")) if trace and profile else None
        try:
            yield server, jsonl
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)


def submit_all(server: Server, spec: dict[str, Any], sizes: list[int]) -> tuple[set[str], Any]:
    """Submit one run per size, back to back; the ids and each POST's seconds."""
    ids, latencies = set(), []
    for size in sizes:
        t0 = time.perf_counter()
        ids.add(server.submit(**spec, parallelism=size))
        latencies.append(time.perf_counter() - t0)
    return ids, latencies


def measure(
    n: int, runs: int, env: dict[str, str], poll: float, trace: Path | None, profile: bool
) -> dict[str, Any]:
    sizes = split(n, runs)
    spec = {"command": ["true"], "machine": "nano", "gangScheduling": False}
    with traced_server(env, trace, profile) as (server, jsonl), Phase(server.proc.pid) as phase:
        start = time.perf_counter()
        ids, latencies = submit_all(server, spec, sizes)
        submitted = time.perf_counter() - start
        done = wait_all(server, ids, poll=poll, timeout=1800)
        wall = time.perf_counter() - start
    bad = [r for r in done if r["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} run(s) did not succeed, e.g. {bad[0]}")
    return {
        "n": n,
        "sizes": sizes_text(sizes),
        "submit": submitted,
        "submit_median": statistics.median(latencies),
        "submit_max": max(latencies),
        "wall": wall,
        "per_shard_ms": wall / n * 1000,
        "cpu": phase.cpu,
        "cpu_per_shard_ms": phase.cpu / n * 1000,
        "before": phase.before / MB,
        "peak": phase.peak / MB,
        "after": phase.after / MB,
        "passes": read_trace(jsonl) if jsonl else None,
    }


def steady(
    n: int, runs: int, env: dict[str, str], hold: float, poll: float, trace: Path, profile: bool
) -> dict[str, Any]:
    """N long shards held for ``hold`` seconds (every pass loads all N), then cancelled.
    With ``profile``, py-spy records only the steady window (settled to end of hold)."""
    sizes = split(n, runs)
    spec = {"command": ["sleep", "3600"], "machine": "nano", "gangScheduling": False}
    with traced_server(env, trace, False) as (server, jsonl):
        assert jsonl is not None
        with Phase(server.proc.pid) as phase:
            start = time.perf_counter()
            ids, latencies = submit_all(server, spec, sizes)
            submitted = time.perf_counter() - start
            window = time.time() + STEADY_SETTLE_SECONDS
            time.sleep(STEADY_SETTLE_SECONDS)
            spy = py_spy(server.proc.pid, trace.with_suffix(".txt")) if profile else None
            time.sleep(max(hold - STEADY_SETTLE_SECONDS, 0))
            until = time.time()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
        live = sum(r["aggregate"]["running"] for r in server.http.get("/v1/runs").json()["items"])
        start = time.perf_counter()
        for run_id in ids:
            server.http.post(f"/v1/runs/{run_id}/cancel").raise_for_status()
        cancel_posts = time.perf_counter() - start
        done = wait_all(server, ids, poll=poll, timeout=600)
        cancel = time.perf_counter() - start
    if any(r["status"] != "cancelled" for r in done):
        raise RuntimeError(f"not all runs cancelled: {[r['status'] for r in done]}")
    passes = [p for p in read_trace(jsonl) if window <= p["t"] <= until]
    return {
        "n": n,
        "sizes": sizes_text(sizes),
        "live": live,
        "submit": submitted,
        "submit_median": statistics.median(latencies),
        "submit_max": max(latencies),
        "cancel_posts": cancel_posts,
        "cancel": cancel,
        "before": phase.before / MB,
        "peak": phase.peak / MB,
        "after": phase.after / MB,
        "cpu_share": phase.cpu / phase.wall,
        "passes": passes,
    }


STEPS = ("cpu", "load", "collect", "poll", "stop_live", "decide", "launch", "flush", "admit",
         "roll_up", "commit", "sql", "gc", "gc_cpu")  # fmt: skip


def read_trace(path: Path) -> list[dict[str, float]]:
    """The passes of a reconciler trace, with ``load`` (what no wrapped step accounts for:
    the store read at the top of the pass, spec validation, signals) and ``admit`` (only
    _admit's own loop: without decide, the launches and the executor's flush) derived."""
    passes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for p in passes:
        known = ("collect", "stop_live", "expire", "admit", "roll_up", "commit", "poll")
        p["load"] = p["total"] - sum(p.get(k, 0.0) for k in known)
        p["admit"] = p.get("admit", 0.0) - sum(p.get(k, 0.0) for k in ("decide", "launch", "flush"))
    return passes


def trace_row(name: str, n: int, passes: list[dict[str, float]], *, per: str) -> list[object]:
    """One line of a per-pass table: ``per`` "sum" (seconds summed over the passes) or
    "median" (ms in the median pass) for each step."""
    times = [p["total"] * 1000 for p in passes]
    most = max(p.get("shards", 0) for p in passes)
    heavy = [p for p in passes if p.get("shards", 0) >= 0.5 * most]
    per_shard = sum(p["total"] for p in heavy) / max(sum(p["shards"] for p in heavy), 1) * 1e6
    if per == "sum":
        steps = [f"{sum(p.get(k, 0.0) for p in passes):.2f}" for k in STEPS]
        sql_n = f"{sum(p.get('sql_n', 0) for p in passes):,.0f}"
    else:
        steps = [f"{statistics.median(p.get(k, 0.0) for p in passes) * 1000:.0f}" for k in STEPS]
        sql_n = f"{statistics.median(p.get('sql_n', 0) for p in passes):,.0f}"
    return [
        name,
        f"{n:,}",
        len(passes),
        f"{statistics.median(times):.0f}",
        f"{max(times):.0f}",
        f"{sum(times) / 1000:.1f}",
        f"{most:,.0f}",
        f"{max(p.get('live', 0) for p in passes):,.0f}",
        f"{per_shard:.0f}",
        *steps,
        sql_n,
    ]


TRACE_HEADERS = ["envelope", "N", "passes", "median ms", "max ms", "busy s", "shards", "live",
                 "us/shard", *STEPS, "SQL n"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="N, comma-separated ('' none)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--sandboxed", type=int, default=1000, help="N for the sandboxed row")
    parser.add_argument("--steady", type=int, default=0, help="N long shards held (0: skip)")
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--trace", type=Path, help="DIR: per-pass reconciler timings here")
    parser.add_argument("--profile", action="store_true", help="with --trace: py-spy too")
    args = parser.parse_args()
    if args.trace is not None:
        args.trace.mkdir(parents=True, exist_ok=True)
    print(f"P5 on {machine()}; load average {os.getloadavg()[0]:.1f}")
    cases = [("plain", int(n), PLAIN) for n in args.sizes.split(",") if n]
    if args.sandboxed:
        cases.append(("sandboxed", args.sandboxed, {}))
    results = []
    for name, n, env in cases:
        trace = args.trace / f"p5-{name}-{n}" if args.trace else None
        result = {"envelope": name, **measure(n, args.runs, env, args.poll, trace, args.profile)}
        print({k: v for k, v in result.items() if k != "passes"}, flush=True)
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
        results.append(result)
    if results:
        base = results[0]
        table(
            f"P5: N x `true` (nano, opportunistic) over {args.runs} runs, all submitted at"
            " once; seconds, ms and MB; goal: RSS < 300 MB, per-shard cost flat",
            ["envelope", "N", "shards/run", "submit 40", "submit median/max", "wall",
             "ms/shard", "vs first", "server CPU s", "CPU ms/shard", "vs first", "RSS before",
             "RSS peak", "RSS after"],
            [
                [
                    r["envelope"], f"{r['n']:,}", r["sizes"], r["submit"],
                    f"{r['submit_median']:.3f}/{r['submit_max']:.3f}", r["wall"],
                    r["per_shard_ms"], f"{r['per_shard_ms'] / base['per_shard_ms']:.2f}x",
                    r["cpu"], r["cpu_per_shard_ms"],
                    f"{r['cpu_per_shard_ms'] / base['cpu_per_shard_ms']:.2f}x",
                    f"{r['before']:.0f}", f"{r['peak']:.0f}", f"{r['after']:.0f}",
                ]
                for r in results
            ],
        )  # fmt: skip
    if args.trace is not None and results:
        table(
            "P5 reconciler passes (traced server): count, ms per pass, seconds busy, most"
            " shards loaded / live in one pass, us per loaded shard (passes loading >= half"
            " the most), then seconds summed over the passes per step, and SQL statements",
            TRACE_HEADERS,
            [trace_row(r["envelope"], r["n"], r["passes"], per="sum") for r in results],
        )
    if args.steady:
        trace_dir = args.trace or Path(tempfile.mkdtemp(prefix="sylphx-p5-"))
        r = steady(
            args.steady, args.runs, PLAIN, args.hold, args.poll,
            trace_dir / f"p5-steady-{args.steady}", args.profile,
        )  # fmt: skip
        table(
            f"P5 steady: {args.steady:,} x `sleep 3600` (nano, opportunistic, plain) over"
            f" {args.runs} runs, held {args.hold:g} s; seconds and MB",
            ["N", "shards/run", "running", "submit 40", "submit median/max",
             "cancel 40 POSTs", "-> all terminal", "RSS before", "RSS peak", "RSS after",
             "server CPU share"],
            [[f"{r['n']:,}", r["sizes"], r["live"], r["submit"],
              f"{r['submit_median']:.3f}/{r['submit_max']:.3f}", r["cancel_posts"], r["cancel"],
              f"{r['before']:.0f}", f"{r['peak']:.0f}", f"{r['after']:.0f}",
              f"{r['cpu_share']:.0%}"]],
        )  # fmt: skip
        table(
            f"P5 steady: reconciler passes from {STEADY_SETTLE_SECONDS:g} s after the last"
            " submit to the end of the hold; ms per step in the median pass",
            TRACE_HEADERS,
            [trace_row("plain", r["n"], r["passes"], per="median")],
        )


if __name__ == "__main__":
    main()
