"""P3: ``GET /v1/runs/{id}`` of a 256-shard run under concurrent clients on loopback, against
a FastAPI hello endpoint served with the same uvicorn settings.

The control plane is a real ``sylphx server`` subprocess (SQLite, local executor,
SYLPHX_SANDBOX=off and no cgroups, capacity raised so 256 nano shards fit). Two runs are
read: a *terminal* one (256 x ``true``, waited for) and a *running* one (256 x ``sleep
600``, all shards running, cancelled at the end), since clients poll active runs. Every
request carries the org's API key, so authentication is part of what is measured. All
connections poll the same run: the server answers a terminal run from memory, and shares
one store read of an active run among the requests that arrive while it waits for a read
slot. The 1-connection rows are the cost of a request that shares nothing.

The baseline, measured in the same invocation on the same machine, is ``bench/hello_app.py``:
``/hello`` (``async def``) and ``/hello-sync`` (a ``def`` endpoint, run in the thread pool
like most sylphx endpoints), in a separate process started with the uvicorn settings
``sylphx server`` uses and the same ``--workers``. A separate app keeps the product free of
a bench route; ``/healthz`` of the sylphx server (sync, no key, no store) is shown too: it
is the floor of the sylphx process itself, whose reconciler thread shares the interpreter.

Load comes from ``wrk`` (one thread, keep-alive connections, written in C, so it takes
little of the CPU the server needs; ``make bench-deps``); without it an asyncio httpx
client is used, which is much heavier and lowers every number. Each point is a 2 s warm-up,
then ``--seconds`` of load. "CPU us/req" is the user + system CPU the server processes used
per request: unlike req/s it hardly depends on what else the machine runs, so the load
average is printed before and after.

    python bench/p3_get_run.py [--shards 256] [--connections 1 16 64] [--workers 1 2]
                               [--seconds 10] [--loadgen wrk|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import Server, cpu_seconds, die_with_parent, free_port, machine, summary, table

HERE = Path(__file__).resolve().parent
GOAL = 1000.0


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # server CPU (user + system) per request


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> Load:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {m[0]: _ms(m[1]) for m in re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Load(rps, pct["50"], pct["99"], errors)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def httpx_load(url: str, connections: int, seconds: float, headers: dict[str, str]) -> Load:
    """Fallback load generator: ``connections`` asyncio workers on one keep-alive pool."""

    async def go() -> Load:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        latencies: list[float] = []
        errors = 0
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10) as client:
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while (start := time.perf_counter()) < deadline:
                    r = await client.get(url)
                    latencies.append(time.perf_counter() - start)
                    errors += r.status_code != 200

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            took = time.perf_counter() - began
        stats = summary(latencies)
        return Load(len(latencies) / took, stats["median"] * 1e3, stats["p99"] * 1e3, errors)

    return asyncio.run(go())


def measure(
    loadgen: str, url: str, connections: int, seconds: float, headers: dict[str, str], pid: int
) -> Load:
    """Load on ``url`` after a 2 s warm-up, with the CPU the server ``pid`` used meanwhile."""
    run = wrk if loadgen == "wrk" else httpx_load
    run(url, connections, 2, headers)  # warm-up: connections, caches, thread pool
    before = cpu_seconds(pid)
    load = run(url, connections, seconds, headers)
    load.cpu_us = (cpu_seconds(pid) - before) / max(load.rps * seconds, 1) * 1e6
    return load


class Hello:
    """``bench/hello_app.py`` on a loopback port with ``workers`` processes."""

    def __init__(self, workers: int) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [sys.executable, str(HERE / "hello_app.py"), self.url.rsplit(":", 1)[1]]
        self.proc = subprocess.Popen(
            [*argv, str(workers)], cwd=HERE, start_new_session=True, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/hello", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("hello app did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def running(server: Server, n: int) -> str:
    """A run of ``n`` x ``sleep 600`` with every shard running."""
    spec = {"command": ["sleep", "600"], "parallelism": n, "machine": "nano"}
    run_id = server.submit(**spec, gangScheduling=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = server.http.get(f"/v1/runs/{run_id}").json()
        if run["aggregate"]["running"] == n:
            return run_id
        time.sleep(0.1)
    raise RuntimeError(f"run {run_id} not fully running after 120s: {run['aggregate']}")


def check(http: httpx.Client, path: str, status: str) -> None:
    r = http.get(path)
    if r.status_code != 200 or r.json()["status"] != status:
        raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")


def bench_workers(args: argparse.Namespace, workers: int) -> list[list[object]]:
    n, loads = args.shards, {}

    def point(name: str, url: str, pid: int, headers: dict[str, str] | None = None) -> None:
        for c in args.connections:
            loads[name, c] = measure(args.loadgen, url, c, args.seconds, headers or {}, pid)

    hello = Hello(workers)
    try:
        point("hello (async def)", f"{hello.url}/hello", hello.proc.pid)
        point("hello (def)", f"{hello.url}/hello-sync", hello.proc.pid)
    finally:
        hello.close()
    env = {"SYLPHX_SANDBOX": "off", "SYLPHX_UNENFORCED_TIERS": "1"}
    cap = {"SYLPHX_LOCAL_CPUS": str(n), "SYLPHX_LOCAL_MEMORY": f"{n}GiB"}
    with Server(workers=workers, **cap, **env) as server:
        pid, auth = server.proc.pid, {"Authorization": f"Bearer {server.token}"}
        done = server.submit(command=["true"], parallelism=n, machine="nano", gangScheduling=False)
        if server.wait(done)["status"] != "succeeded":
            raise RuntimeError(f"run {done} did not succeed")
        point("sylphx /healthz", f"{server.url}/healthz", pid)
        check(server.http, f"/v1/runs/{done}", "succeeded")
        point("GET run, terminal", f"{server.url}/v1/runs/{done}", pid, auth)
        live = running(server, n)
        try:
            check(server.http, f"/v1/runs/{live}", "running")
            point("GET run, running", f"{server.url}/v1/runs/{live}", pid, auth)
        finally:
            server.http.post(f"/v1/runs/{live}/cancel")
            server.wait(live, timeout=120)
    rows: list[list[object]] = []
    for (name, c), load in sorted(loads.items(), key=lambda item: item[0][1]):  # stable
        base = loads["hello (async def)", c].rps
        rows.append(
            [workers, c, name, f"{load.rps:,.0f}", f"{load.p50_ms:.1f}", f"{load.p99_ms:.1f}",
             f"{load.rps / base:.2f}x", f"{load.cpu_us:,.0f}", load.errors]
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--loadgen", choices=["wrk", "httpx"], default=None)
    args = parser.parse_args()
    args.loadgen = args.loadgen or ("wrk" if shutil.which("wrk") else "httpx")
    if args.loadgen == "httpx":
        print("wrk not found: using the asyncio httpx load generator (heavier; lower numbers)")
    print(f"P3 on {machine()}; load generator: {args.loadgen}, on the same machine")
    print(f"load average before: {_loadavg()}", flush=True)
    rows = [row for w in args.workers for row in bench_workers(args, w)]
    print(f"load average after: {_loadavg()}")
    table(
        f"P3: GET /v1/runs/{{id}} of a {args.shards}-shard run, {args.seconds:g} s per point;"
        f" req/s, latency ms, server CPU us per request; ratio vs hello (async def);"
        f" goal >= {GOAL:,.0f} req/s",
        ["workers", "conns", "endpoint", "req/s", "p50", "p99", "vs hello", "CPU us/req",
         "errors"],
        rows,
    )  # fmt: skip


def _loadavg() -> str:
    """1/5/15-minute load averages: other work on the machine competes for its cores."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
