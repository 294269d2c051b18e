"""Shared pieces of the benchmarks: a real ``sylphx server`` subprocess on loopback, timing
statistics, result tables and a description of the machine.

Every benchmark measures its baseline in the same run, on the same machine, and prints the
ratio; nothing here asserts a speed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

# Where control-plane homes (store, state folders, logs) go. Default: a tmpfs (/dev/shm),
# so a benchmark measures the control plane, not this host's disk: on the development VM
# (ext4 mounted with `discard`) a directory tree that recently had many files deleted
# makes every mkdir and create in it ~30x slower (25 us -> 900 us) for minutes, which
# swamped the comparison with xargs. SYLPHX_BENCH_DIR=/some/disk/path measures on a disk.
SHM = Path("/dev/shm")
BENCH_HOMES = Path(
    os.environ.get("SYLPHX_BENCH_DIR")
    or (SHM / "sylphx-bench" if os.access(SHM, os.W_OK) else Path(__file__).parent / ".homes")
)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` of every server a benchmark starts: the kernel sends it SIGTERM when
    the benchmark's process ends, however it ends. Servers run in their own session (so a
    Ctrl-C reaches the benchmark only), and a benchmark that was killed used to leave its
    server running, which then skewed the next measurements on this 2-core machine."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: every ``with Server(...)`` closes its server


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

# The two shard envelopes benchmarks compare: ``plain`` runs the same processes a hand-rolled
# fan-out would (no sandbox, no cgroups); ``sandboxed`` is the production default.
ENVELOPES: dict[str, dict[str, str]] = {
    "plain": {"SYLPHX_SANDBOX": "off", "SYLPHX_UNENFORCED_TIERS": "1"},
    "sandboxed": {},
}
TERMINAL = ("succeeded", "partial", "failed", "cancelled", "timed_out")
MAX_WAIT = 60.0  # the longest long-poll the API allows (GET /v1/runs/{id}?wait=)


def _trace_env() -> dict[str, str]:
    """``SYLPHX_BENCH_TRACE=FILE`` set for a benchmark reaches its server, with
    ``reconciler_trace`` on its path (see bench/reconciler_trace/sitecustomize.py): every
    other ``SYLPHX_*`` variable of the caller is dropped, so that one must be let through."""
    trace = os.environ.get("SYLPHX_BENCH_TRACE")
    if not trace:
        return {}
    path = [str(Path(__file__).parent / "reconciler_trace"), os.environ.get("PYTHONPATH", "")]
    return {"SYLPHX_BENCH_TRACE": trace, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def sandbox_argv(command: Sequence[str]) -> list[str]:
    """The argv a sandboxed shard of ``command`` runs (the same-envelope baseline): both
    bubblewrap stages, the uid drop and the seccomp filter, opened at fd 3 by a shell as
    the supervisor does. Without the network hand-shake (``network: false``): a plain
    process pool cannot start slirp4netns per process."""
    from sylphx._server.executors.envelope.sandbox import Sandbox
    from sylphx._server.executors.envelope.seccomp import write_filter
    from sylphx._server.executors.local.netstack import ENV_FD, SECCOMP_FD

    bpf = write_filter(Path(tempfile.gettempdir()) / f"sylphx-bench-{os.getpid()}.bpf")
    opener = f'exec "$@" {SECCOMP_FD}<"$0" {ENV_FD}</dev/null'
    box = Sandbox(network=False, working_dir="/tmp").argv()
    return ["/bin/sh", "-c", opener, str(bpf), *box, *command]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m sylphx server`` on a loopback port, its own SYLPHX_HOME and SQLite store
    (or ``database_url``), with an enterprise org ``bench`` and an authenticated client."""

    def __init__(
        self,
        *,
        workers: int = 1,
        database_url: str | None = None,
        homes: Path | None = None,
        **env: str,
    ) -> None:
        """``homes``: where to make the home (default BENCH_HOMES)."""
        (homes or BENCH_HOMES).mkdir(parents=True, exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix="sylphx-bench-", dir=homes or BENCH_HOMES))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SYLPHX_")},
            **_trace_env(),
            "SYLPHX_HOME": str(self.home),
            "SYLPHX_DATABASE_URL": database_url or f"sqlite:///{self.home / 'sylphx.db'}",
            **env,
        }
        self.token = self._make_org()
        argv = [sys.executable, "-m", "sylphx", "server", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--workers", str(workers)]
        self.log = self.home / "server.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.http = httpx.Client(
            base_url=self.url, timeout=120, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            self._wait_healthy()
        except BaseException:  # SIGTERM (see above) or a server that never came up
            self.close()
            raise

    def _make_org(self) -> str:
        from sylphx._server.store import make_engine, migrate, session_factory
        from sylphx._server.tenancy import orgs

        engine = make_engine(self.env["SYLPHX_DATABASE_URL"])
        now = datetime.now(UTC)
        try:
            migrate(engine)
            with session_factory(engine).begin() as s:
                orgs.create_org(
                    s, "bench", plan="enterprise", now=now, org_id="org_bench",
                    concurrent_shards=100_000,
                )  # fmt: skip
                return orgs.create_key(s, "org_bench", name="bench", now=now)[1]
        finally:
            engine.dispose()

    def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died; see {self.log}:\n{self.log.read_text()}")
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {timeout}s; see {self.log}")

    def submit(self, **spec: Any) -> str:
        r = self.http.post("/v1/runs", json=spec)
        if r.status_code != 201:
            raise RuntimeError(f"submit failed: {r.status_code} {r.text}")
        return str(r.json()["id"])

    def wait(
        self, run_id: str, *, poll: float | None = None, timeout: float = 600
    ) -> dict[str, Any]:
        """The run, once terminal. Each request is a long-poll, ``GET /v1/runs/{id}?wait=``,
        which the server answers as soon as the run ends; ``poll=SECONDS`` instead polls
        the plain GET that often (how clients learned of the end before long-polls)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            params = {} if poll is not None else {"wait": min(MAX_WAIT, max(0.01, left))}
            r = self.http.get(f"/v1/runs/{run_id}", params=params)
            r.raise_for_status()
            run = dict(r.json())
            if run["status"] in TERMINAL:
                return run
            if poll is not None:
                time.sleep(poll)
        raise RuntimeError(f"run {run_id} not terminal after {timeout}s")

    def quiesce(self, seconds: float = 1.0) -> None:
        """Let the server finish what it does after a run (start spare supervisors, reap
        finished ones), so that work never lands inside the next timed measurement --
        the baseline's or our own. Benchmarks call it before every timed round."""
        time.sleep(seconds)

    def fan_out(self, n: int, command: Sequence[str] = ("true",), **extra: Any) -> float:
        """Seconds from submitting ``n`` opportunistic nano shards of ``command`` (and any
        ``extra`` spec fields) to seeing the run terminal (it must succeed)."""
        spec = {
            "command": list(command),
            "parallelism": n,
            "machine": "nano",
            "gangScheduling": False,
            **extra,
        }
        start = time.perf_counter()
        run_id = self.submit(**spec)
        run = self.wait(run_id)
        took = time.perf_counter() - start
        if run["status"] != "succeeded":
            raise RuntimeError(f"run {run_id} ended {run['status']}: {run.get('message')}")
        return took

    def rss_bytes(self) -> int:
        """Resident memory of the server process (and its API workers, if any)."""
        pids = [self.proc.pid, *_children(self.proc.pid)]
        return sum(rss_of(pid) for pid in pids)

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    """API worker processes of a multi-worker server (not shard supervisors)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"supervise" not in cmdline:  # supervise.py, or BOOT importing it
            out.append(int(entry.name))
    return out


def rss_of(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def host_cpu() -> float:
    """CPU seconds every core of the host has been busy (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` and its API workers (0 if gone)."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def summary(samples: Sequence[float]) -> dict[str, float]:
    """median, p99, min and max of ``samples``."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "median": statistics.median(ordered),
        "p99": p99,
        "min": ordered[0],
        "max": ordered[-1],
    }


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (also valid Markdown), printed and returned."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [f"\n### {title}\n"]
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def machine() -> str:
    """One line naming the machine and the versions a result depends on."""
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, Linux {platform.release()},"
        f" Python {platform.python_version()}, sylphx {rev or '?'}"
    )
