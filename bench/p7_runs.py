"""P7: control-plane throughput: N single-shard runs of ``true`` from 16 concurrent clients.

A real ``sylphx server`` subprocess (local executor, capacity raised so no shard waits for
room; the ``bench`` org's concurrent-shard budget of 100,000 never binds) gets N = 1,000
runs ``{"command": ["true"], "machine": "nano"}``, each its own ``POST /v1/runs``, from
``--clients`` (16) concurrent connections. Reported, per round:

- submit rate: N / (first POST sent -> last 201 received);
- submit -> terminal rate: N / (first POST sent -> all N runs seen terminal);
- p50/p99 submit latency (each POST, request sent -> 201 read);
- admission latency p50/p99: each run's ``createdAt`` to its shard's ``startedAt``
  (both from the API, read after the round);
- the server's CPU per run (its process, /proc; the shard supervisors are not in it)
  and the whole host's CPU per run (/proc/stat: everything, the baseline's share too);
- the load generator's own CPU seconds over the round.

The load generator is another process (``--loadgen``, spawned per round): one asyncio loop
with ``--clients`` keep-alive HTTP/1.1 connections over raw sockets (no HTTP library: the
request bytes are built once), so it costs the 2-core host as little as a client can. It
imports nothing of sylphx. Termination is seen by polling ``GET
/v1/runs?status=queued&limit=1`` and ``?status=running&limit=1`` every 50 ms once every
submit is answered: two small indexed queries, ~40 requests a second.

The baseline, in the same run, interleaved round by round: ``xargs -P 16`` over the same N
``true`` processes (sandboxed: the sandbox's argv, without the network hand-shake, as in P1).

Stores: SQLite (the home's file, on tmpfs like the home) and PostgreSQL (a throwaway
durable cluster, fsync on, under the bench homes' directory: ``tests/pgserver.py``).

    python bench/p7_runs.py [--runs 1000] [--clients 16] [--rounds 3]
        [--envelopes plain,sandboxed] [--stores sqlite,postgres]

``SYLPHX_BENCH_PYSPY=PREFIX`` (with py-spy installed by hand) samples the server's
GIL-holding thread over each round's timed window: one ``PREFIX.<time>.raw`` a round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CAPACITY = {"SYLPHX_LOCAL_CPUS": "256", "SYLPHX_LOCAL_MEMORY": "256GiB"}
SPEC = b'{"command":["true"],"machine":"nano"}'
POLL = 0.05


# -- the load generator (its own process) ------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection: a request, then its whole answer."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\nHost: {host}:{port}\r\n".encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self.auth
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.writer.write(head + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line and method == "GET":  # the server closed it while idle: again
            self.close()
            await self.open()
            self.writer.write(head + b"\r\n" + body)
            status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked answers are not expected here")
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _generate(url: str, token: str, n: int, clients: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    conns = [Conn(host, int(port), token) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    cpu0 = _own_cpu()
    left = iter(range(n))
    latencies: list[float] = []
    ids: list[str] = []
    refused: list[str] = []

    async def worker(conn: Conn) -> None:
        for _ in left:
            t0 = time.perf_counter()
            status, body = await conn.request("POST", "/v1/runs", SPEC)
            latencies.append(time.perf_counter() - t0)
            if status != 201:
                refused.append(f"{status} {body[:200]!r}")
                continue
            ids.append(json.loads(body)["id"])

    start = time.monotonic()
    await asyncio.gather(*(worker(c) for c in conns))
    submitted = time.monotonic()
    await _until_terminal(conns[0])
    terminal = time.monotonic()
    cpu = _own_cpu() - cpu0
    print("terminal", flush=True)  # the timed window is over (a profiler may stop)
    # after the timed window: every run's shard, for its admission latency and status
    created = await _created(conns[0], len(ids))
    admission: list[float] = []
    statuses: dict[str, int] = {}
    todo = iter(ids)

    async def reader(conn: Conn) -> None:
        for run_id in todo:
            code, body = await conn.request("GET", f"/v1/runs/{run_id}/shards")
            shard = json.loads(body)[0] if code == 200 else {"status": f"HTTP {code}"}
            statuses[shard["status"]] = statuses.get(shard["status"], 0) + 1
            if shard.get("startedAt"):
                admission.append(_seconds(shard["startedAt"]) - created[run_id])

    await asyncio.gather(*(reader(c) for c in conns))
    for c in conns:
        c.close()
    return {
        "start": start,
        "submitted": submitted,
        "terminal": terminal,
        "latencies": latencies,
        "refused": refused,
        "cpu": cpu,
        "admission": admission,
        "statuses": statuses,
    }


async def _until_terminal(conn: Conn) -> None:
    """Until no run of the org is queued or running (polled every POLL seconds)."""
    while True:
        busy = False
        for status in ("queued", "running"):
            code, body = await conn.request("GET", f"/v1/runs?status={status}&limit=1")
            busy = busy or code != 200 or bool(json.loads(body)["items"])
        if not busy:
            return
        await asyncio.sleep(POLL)


async def _created(conn: Conn, n: int) -> dict[str, float]:
    """``createdAt`` of the org's newest ``n`` runs (and a page more), from the run list."""
    created: dict[str, float] = {}
    cursor = None
    while len(created) < n:
        query = "/v1/runs?limit=200" + (f"&cursor={cursor}" if cursor else "")
        page = json.loads((await conn.request("GET", query))[1])
        created |= {r["id"]: _seconds(r["createdAt"]) for r in page["items"]}
        cursor = page["nextCursor"]
        if cursor is None:
            break
    return created


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loadgen_main(url: str, token: str, n: int, clients: int) -> None:
    result = asyncio.run(_generate(url, token, n, clients))
    print(json.dumps(result), flush=True)


# -- the bench ---------------------------------------------------------------------------


def round_of(
    server: Any, n: int, clients: int, on_terminal: Callable[[], None] | None = None
) -> dict[str, Any]:
    """One round of N submits from the load generator; its numbers. ``on_terminal`` is
    called when every run is terminal, before the (untimed) read-back."""
    from harness import cpu_seconds, host_cpu

    argv = [sys.executable, __file__, "--loadgen", server.url, server.token, str(n), str(clients)]
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    if gen.stdout.readline().strip() != "ready":
        raise RuntimeError("load generator did not start")
    spy = profiler(server.proc.pid)
    server_cpu0, host_cpu0 = cpu_seconds(server.proc.pid), host_cpu()
    gen.stdin.write("go\n")
    gen.stdin.flush()
    if gen.stdout.readline().strip() != "terminal":
        raise RuntimeError("load generator failed")
    server_cpu, total_cpu = cpu_seconds(server.proc.pid) - server_cpu0, host_cpu() - host_cpu0
    if spy is not None:  # its samples: the timed window only, not the read-back
        spy.send_signal(signal.SIGINT)
        spy.wait()
    if on_terminal is not None:
        on_terminal()
    out = json.loads(gen.stdout.readline())
    gen.wait()
    if out["refused"] or out["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"refused {out['refused'][:3]}, shards {out['statuses']}")
    lat = sorted(out["latencies"])
    adm = sorted(out["admission"])
    return {
        "submit_rate": n / (out["submitted"] - out["start"]),
        "rate": n / (out["terminal"] - out["start"]),
        "wall": out["terminal"] - out["start"],
        "p50": statistics.median(lat) * 1e3,
        "p99": lat[round(0.99 * (len(lat) - 1))] * 1e3,
        "adm50": statistics.median(adm) * 1e3,
        "adm99": adm[round(0.99 * (len(adm) - 1))] * 1e3,
        "server_cpu": server_cpu / n * 1e3,
        "host_cpu": total_cpu / n * 1e3,
        "gen_cpu": out["cpu"],
    }


def profiler(pid: int) -> subprocess.Popen[bytes] | None:
    """With ``SYLPHX_BENCH_PYSPY=PREFIX``: py-spy (installed by hand: not a dependency)
    sampling the server's threads that hold the GIL, one raw file a round
    (``PREFIX.<time>.raw``), stopped when every run is terminal."""
    prefix = os.environ.get("SYLPHX_BENCH_PYSPY")
    if not prefix:
        return None
    out = f"{prefix}.{time.time():.0f}.raw"
    argv = ["py-spy", "record", "-p", str(pid), "--gil", "--threads", "-r", "250"]
    spy = subprocess.Popen([*argv, "--format", "raw", "-o", out], stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the round starts
    return spy


def xargs(n: int, clients: int, argv: list[str]) -> float:
    """``xargs -P clients`` over n processes of ``argv``; seconds."""
    cmd = ["xargs", "-P", str(clients), "-I{}", *argv]
    start = time.perf_counter()
    subprocess.run(cmd, input="\n".join("x" * n), text=True, check=True, capture_output=True)
    return time.perf_counter() - start


def postgres() -> Any:
    """A throwaway durable PostgreSQL cluster (fsync on) beside the bench homes."""
    from harness import BENCH_HOMES

    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgserver import PgServer

    BENCH_HOMES.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(BENCH_HOMES)
    try:
        pg = PgServer(durable=True)
    finally:
        tempfile.tempdir = None
    pg.start()
    return pg


def med(rounds: list[dict[str, Any]], key: str, fmt: str = "{:.0f}") -> str:
    values = [r[key] for r in rounds]
    return (fmt + " (" + fmt + "-" + fmt + ")").format(
        statistics.median(values), min(values), max(values)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--envelopes", default="plain,sandboxed")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--workers", type=int, default=1, help="the server's API processes")
    parser.add_argument("--loadgen", nargs=4, metavar=("URL", "TOKEN", "N", "CLIENTS"))
    args = parser.parse_args()
    if args.loadgen:
        url, token, n, clients = args.loadgen
        loadgen_main(url, token, int(n), int(clients))
        return
    from harness import ENVELOPES, Server, machine, sandbox_argv, table

    n, clients = args.runs, args.clients
    print(f"P7 on {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for store in args.stores.split(","):
        pg = postgres() if store == "postgres" else None
        try:
            for envelope in args.envelopes.split(","):
                url = pg.create_database() if pg is not None else None
                ours: list[dict[str, Any]] = []
                base: list[float] = []
                argv = ["true"] if envelope == "plain" else sandbox_argv(["true"])
                with Server(
                    workers=args.workers, database_url=url, **CAPACITY, **ENVELOPES[envelope]
                ) as server:
                    round_of(server, 50, clients)  # warm-up: imports, caches, supervisors
                    for _ in range(args.rounds):
                        server.quiesce()
                        base.append(xargs(n, clients, argv))
                        server.quiesce()
                        ours.append(round_of(server, n, clients))
                        print(store, envelope, ours[-1], f"xargs {base[-1]:.3f}", flush=True)
                b = statistics.median(base)
                rate = statistics.median(r["rate"] for r in ours)
                rows.append(
                    [
                        envelope,
                        store,
                        f"{n / b:,.0f} ({b:.2f} s)",
                        med(ours, "rate"),
                        f"{n / b / rate:.1f}x",
                        med(ours, "submit_rate"),
                        f"{med(ours, 'p50', '{:.1f}')} / {med(ours, 'p99', '{:.1f}')}",
                        f"{med(ours, 'adm50', '{:.1f}')} / {med(ours, 'adm99', '{:.1f}')}",
                        med(ours, "server_cpu", "{:.2f}"),
                        med(ours, "host_cpu", "{:.2f}"),
                        med(ours, "gen_cpu", "{:.2f}"),
                    ]
                )
        finally:
            if pg is not None:
                pg.destroy()
    table(
        f"P7: {n:,} single-shard runs of `true` (nano) from {clients} concurrent clients;"
        f" median (min-max) of {args.rounds} rounds; goal >= 500 runs/s submit -> terminal"
        " (SQLite, plain), p99 submit < 100 ms",
        ["envelope", "store", f"xargs -P {clients} runs/s", "submit -> terminal runs/s",
         "xargs / sylphx", "submits/s", "submit p50 / p99 ms", "admission p50 / p99 ms",
         "server CPU ms/run", "host CPU ms/run", "load generator CPU s"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
