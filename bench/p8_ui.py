"""P8: the web dashboard's server time for a 256-shard run: its page (``GET /ui/runs/{id}``:
the header, 256 grid cells, the failure groups, the timeline, rendered server-side) and
one live update (``GET /ui/runs/{id}/live``: the header fragment and every cell's state,
what the page's long-poll brings after each change while the run is active) and the
check a long-poll starts and ends with when nothing changed (``live?version=<current>``:
the run's live version read, ``{"changed": false}``), against ``GET /v1/runs/{id}`` (the
API's JSON of the same run) as the baseline, in the same run on the same server.

The control plane is a real ``sylphx server`` subprocess (SQLite, local executor, the
``plain`` envelope: no sandbox, no cgroups; capacity raised so 256 nano shards fit). Two
runs are read: an *ended* one (256 shards, every 50th from 7 failed twice: ``partial``,
with failure groups and retries on its timeline) and a *running* one (256 x ``sleep 600``,
cancelled at the end). The dashboard requests carry a session cookie (signed in through
the form), the API's its key: authentication is part of each.

Each point is ``--requests`` sequential requests on one keep-alive connection over
loopback after a warm-up; the time is the client's, from sending the request to the last
byte of the answer: the server's time plus a loopback round trip (the baseline's row
shows how little that is). Goal: a p50 under 50 ms for the page and the live update.

    python bench/p8_ui.py [--shards 256] [--requests 200]
"""

from __future__ import annotations

import argparse
import re
import time

import httpx
from harness import ENVELOPES, TERMINAL, Server, machine, summary, table

GOAL_MS = 50.0
FAILING = (  # every 50th shard from 7 fails (twice: one retry each)
    'if [ $((SYLPHX_SHARD_INDEX % 50)) -eq 7 ]; then echo "boom $SYLPHX_SHARD_INDEX" >&2;'
    " exit 3; fi"
)


def sign_in(url: str, key: str) -> httpx.Client:
    """A client holding a dashboard session, signed in through the form."""
    c = httpx.Client(base_url=url, timeout=60)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
    assert token is not None
    r = c.post("/ui/login", data={"key": key, "csrf": token[1]})
    assert r.status_code == 303, r.text
    return c


def timed(client: httpx.Client, path: str, n: int) -> tuple[list[float], int]:
    """``n`` sequential GETs of ``path`` (after 10 unmeasured): milliseconds, body bytes."""
    size = 0
    for _ in range(10):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        size = len(r.content)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200
    return out, size


def wait_running(server: Server, run_id: str, shards: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agg = server.http.get(f"/v1/runs/{run_id}").json()["aggregate"]
        if agg["running"] == shards:
            return
        time.sleep(0.2)
    raise RuntimeError(f"run {run_id}: not all {shards} shards running after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    n = args.shards
    cap = {"SYLPHX_LOCAL_CPUS": str(n), "SYLPHX_LOCAL_MEMORY": f"{n}GiB"}
    print(f"P8 on {machine()}", flush=True)
    rows: list[list[object]] = []
    with Server(**cap, **ENVELOPES["plain"]) as server:
        ended = server.submit(
            command=["sh", "-c", FAILING],
            parallelism=n,
            machine="nano",
            gangScheduling=False,
            backoffLimitPerIndex=1,
            retryBackoff={"initialSeconds": 0.1},
        )
        status = server.wait(ended)["status"]
        assert status in TERMINAL
        running = server.submit(
            command=["sleep", "600"], parallelism=n, machine="nano", gangScheduling=False
        )
        wait_running(server, running, n)
        ui = sign_in(server.url, server.token)
        try:
            for label, run_id in ((f"ended ({status})", ended), ("running", running)):
                server.quiesce()
                version = ui.get(f"/ui/runs/{run_id}/live").json()["version"]
                unchanged = f"/ui/runs/{run_id}/live?version={version}&wait=0"
                points = [
                    (
                        "GET /v1/runs/{id} (baseline: the API's JSON)",
                        server.http,
                        f"/v1/runs/{run_id}",
                    ),
                    ("GET /ui/runs/{id} (the run page)", ui, f"/ui/runs/{run_id}"),
                    ("GET /ui/runs/{id}/live (one live update)", ui, f"/ui/runs/{run_id}/live"),
                    ("GET /ui/runs/{id}/live?version= (no change)", ui, unchanged),
                ]
                for name, client, path in points:
                    samples, size = timed(client, path, args.requests)
                    s = summary(samples)
                    rows.append(
                        [label, name, f"{size / 1024:.1f}", f"{s['median']:.2f}", f"{s['p99']:.2f}"]
                    )
        finally:
            ui.close()
            server.http.post(f"/v1/runs/{running}/cancel")
    table(
        f"P8: the dashboard's server time, {n}-shard run (ms; {args.requests} sequential"
        f" requests, 1 keep-alive connection, loopback; goal p50 < {GOAL_MS:.0f} ms)",
        ["run", "request", "KiB", "p50 ms", "p99 ms"],
        rows,
    )


if __name__ == "__main__":
    main()
