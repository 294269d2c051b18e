"""P4: one shard writes 1 GiB to stdout; capture rate and server RSS, against ``cat``.

A shard's stdout is a pipe to its attempt's supervisor, which moves the bytes into
``SYLPHX_HOME/logs/RUN/shard-I.attempt-N.stdout`` with splice() (no copy through user space)
-- or, for a run with secrets, reads them, masks the secret values and writes them -- up to
SYLPHX_MAX_LOG_BYTES; the control plane never touches them. The shard runs ``cat SRC``,
where SRC is a pre-made 1 GiB file (in /var/tmp: visible read-only inside the sandbox, and
on the same filesystem as SYLPHX_HOME). Every envelope is measured twice: as is, and "with
a secret" (the run names one, so its output goes through the redactor). The baseline,
measured in the same run and interleaved, is ``cat SRC > FILE`` with FILE beside the logs.

Per round and envelope:

- capture rate: bytes / the shard's own duration (supervisor spawn -> exit, from the
  attempt's history); also bytes / (submit -> terminal, client-side);
- the server's RSS over the run (before, exact peak via VmHWM, growth) and its CPU seconds;
- the log file's size on disk (must be exactly the bytes written);
- read-back: ``curl`` of ``GET /v1/runs/{id}/logs?shard=0`` to /dev/null (bytes, rate, server
  RSS peak and CPU), against ``cat FILE > /dev/null``.

``sync`` runs (untimed) before each timed write, so every write starts with no dirty pages.
The shard asks for ``--machine`` (default ``large``: 2 vCPU, 4 GiB; under the sandboxed
envelope its cgroup's CPU quota and memory ceiling apply, and page cache counts against the
memory ceiling).

    python bench/p4_logs.py [--gib 1] [--rounds 3] [--machine large]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ENVELOPES, Server, machine, summary, table
from sampling import MB, Phase


def make_source(folder: Path, size: int) -> Path:
    src = folder / "src.bin"
    with open(src, "wb") as fh:
        subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=fh, check=True)
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # page cache
    return src


def timed(argv: list[str], out: Path | None) -> float:
    """Run ``argv`` with stdout to ``out`` (or /dev/null); seconds."""
    with open(out or os.devnull, "wb") as fh:
        start = time.perf_counter()
        subprocess.run(argv, stdout=fh, check=True)
        return time.perf_counter() - start


def _seconds(attempt: dict[str, Any]) -> float:
    from datetime import datetime

    start = datetime.fromisoformat(attempt["startedAt"])
    end = datetime.fromisoformat(attempt["endedAt"])
    return (end - start).total_seconds()


SECRET = "P4_TOKEN"  # a secret the "with a secret" runs name (its value is not in SRC)


def sylphx_round(
    server: Server, src: Path, size: int, tier: str, *, secret: bool = False
) -> dict[str, float]:
    subprocess.run(["sync"], check=True)
    pid = server.proc.pid
    spec: dict[str, Any] = {"command": ["cat", str(src)], "machine": tier}
    if secret:
        spec["secrets"] = [SECRET]
    with Phase(pid) as write:
        start = time.perf_counter()
        run_id = server.submit(**spec)
        run = server.wait(run_id, poll=0.05)
        e2e = time.perf_counter() - start
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} ended {run['status']}: {run.get('message')}")
    shard = server.http.get(f"/v1/runs/{run_id}/shards").json()[0]
    log = server.home / "logs" / run_id / "shard-0.attempt-1.stdout"
    on_disk = log.stat().st_size
    if on_disk != size:
        raise RuntimeError(f"{log} holds {on_disk} bytes, expected {size}")

    url = f"{server.url}/v1/runs/{run_id}/logs?shard=0"
    auth = f"Authorization: Bearer {server.token}"
    with Phase(pid) as read:
        out = subprocess.run(
            ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}", "-H", auth, url],
            capture_output=True,
            text=True,
            check=True,
        )
    streamed = int(float(out.stdout))
    if streamed != size:
        raise RuntimeError(f"GET logs streamed {streamed} bytes, expected {size}")
    read_cat = timed(["cat", str(log)], None)
    log.unlink()  # keep the disk and the page cache as they were
    return {
        "capture": size / _seconds(shard["history"][0]) / MB,
        "e2e": size / e2e / MB,
        "write_before": write.before / MB,
        "write_growth": write.growth_mb(),
        "write_cpu": write.cpu,
        "read": size / read.wall / MB,
        "read_cat": size / read_cat / MB,
        "read_growth": read.growth_mb(),
        "read_peak": read.peak / MB,
        "read_cpu": read.cpu,
    }


def baseline_round(server: Server, src: Path, size: int) -> float:
    out = server.home / "logs" / "baseline.out"
    subprocess.run(["sync"], check=True)
    took = timed(["cat", str(src)], out)
    if out.stat().st_size != size:
        raise RuntimeError("baseline wrote the wrong size")
    out.unlink()
    return size / took / MB


def _cell(values: list[float], fmt: str = "{:,.0f}") -> str:
    s = summary(values)
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--machine", default="large")
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    print(f"P4 on {machine()}; load average {os.getloadavg()[0]:.1f}")
    folder = Path(tempfile.mkdtemp(prefix="sylphx-p4-", dir="/var/tmp"))
    folder.chmod(0o755)  # shards run as an unprivileged user: they read the source there
    rows, reads = [], []
    try:
        src = make_source(folder, size)
        for name, env in ENVELOPES.items():
            got: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            base: list[float] = []
            with Server(homes=folder, **env) as server:  # logs on disk, not the tmpfs
                value = {"name": SECRET, "value": "p4-" + os.urandom(16).hex()}
                server.http.post("/v1/secrets", json=value).raise_for_status()
                server.wait(server.submit(command=["true"], machine=args.machine))  # warm-up
                for _ in range(args.rounds):  # interleaved: all see the same machine load
                    base.append(baseline_round(server, src, size))
                    for secret in (False, True):
                        got[secret].append(
                            sylphx_round(server, src, size, args.machine, secret=secret)
                        )
            for secret in (False, True):
                label = f"{name} + secret" if secret else name
                add_rows(rows, reads, label, base, got[secret])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    gib = f"{args.gib:g} GiB"
    table(
        f"P4: one {args.machine} shard `cat`s {gib} to stdout; MB/s (1 MB = 10^6 B) and"
        f" server RSS MB, median (min-max) of {args.rounds} rounds;"
        " goal >= 200 MB/s (>= 500 with a secret), RSS growth < 50 MB",
        [
            "envelope",
            "cat > file",
            "sylphx capture",
            "capture / cat",
            "submit->terminal",
            "RSS before",
            "RSS growth (peak)",
            "server CPU s",
        ],
        rows,
    )
    table(
        f"P4 read-back: `curl` GET /v1/runs/{{id}}/logs?shard=0 ({gib}) to /dev/null; MB/s and"
        " server RSS MB",
        ["envelope", "cat file", "GET logs", "RSS growth (peak)", "RSS peak", "server CPU s"],
        reads,
    )


def add_rows(
    rows: list[list[str]],
    reads: list[list[str]],
    name: str,
    base: list[float],
    got: list[dict[str, float]],
) -> None:
    """One envelope's write row and read-back row."""

    def col(key: str) -> list[float]:
        return [r[key] for r in got]

    rows.append(
        [
            name,
            _cell(base),
            _cell(col("capture")),
            f"{summary(col('capture'))['median'] / summary(base)['median']:.2f}x",
            _cell(col("e2e")),
            f"{summary(col('write_before'))['median']:.0f}",
            _cell(col("write_growth"), "{:.1f}"),
            _cell(col("write_cpu"), "{:.2f}"),
        ]
    )
    reads.append(
        [
            name,
            _cell(col("read_cat")),
            _cell(col("read")),
            _cell(col("read_growth"), "{:.1f}"),
            f"{max(col('read_peak')):.0f}",
            _cell(col("read_cpu"), "{:.2f}"),
        ]
    )


if __name__ == "__main__":
    main()
