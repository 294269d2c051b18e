"""P6: overhead of the sylphx Ray executor over raw Ray tasks, on the same cluster, in one run.

Both sides run the same trivial workload: N shards (default 200), each a real ``true``
process asking for the nano tier (0.1 vCPU / 256 MiB). sylphx goes end to end through its
HTTP API (a ``sylphx server`` subprocess driving the cluster: submit, admission, the shards
run in the hub's slots, log shipping, store writes, aggregate; the client long-polls for
the end).
The baseline submits N Ray tasks that each run ``true`` with the same resources and waits;
a second baseline does the same from a driver that keeps at most as many tasks in flight
as the cluster runs at once (as an orchestrator that owns admission must), which tells the
cost of not queueing in Ray from the cost of sylphx; a third runs, in each raw Ray task,
``true`` in the very envelope a sylphx shard gets on that node (built by the same node
code: bubblewrap, seccomp, slirp4netns, the tier's cgroup), which tells the envelope's
cost from the control plane's; a fourth runs sylphx's node body with the same
envelope, owned by an actor as sylphx's hub owns its shards' and windowed as the second
one, which tells what the control plane adds to its node body (and the body to ``true``).
Each envelope (``plain``: the goal row, the same process on both sides; ``sandboxed``:
bubblewrap per shard, the production default) gets its own server, its own warm-up and
its own baseline rounds, interleaved with sylphx's: each column starts on a settled
host (8 s after the one before, no Ray worker still booting, the CPU back at the idle
cluster's level: see ``settle``), in an order rotated every round.

The loopback cluster is configured once, for both sides alike (see ``cluster_env``): Ray
keeps enough idle workers per node for the two drivers' fractional-CPU bursts, instead of
killing all but ~2 a second after every burst and starting them again in the next one.

    python bench/p6_ray.py                 # a 3-node loopback cluster it starts itself
    python bench/p6_ray.py --address H:P   # an existing cluster (its own configuration)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback

import ray
from harness import BENCH_HOMES, ENVELOPES, Server, host_cpu, machine, summary, table

from sylphx._core.machines import MACHINES
from sylphx._server.executors.base import LaunchRequest
from sylphx._server.executors.ray.remote import NodeEnvelope
from sylphx._server.plane import shard_policy
from sylphx._settings import Settings

TIER = MACHINES["nano"]
NODE = dict(num_cpus=2, memory=4 << 30, object_store_memory=80 << 20, num_gpus=0)
DRIVERS = 2  # Ray keeps a worker pool per driver (job): this script's and the server's
WARM_ROUNDS = 2  # full-size rounds per side before timing: the first starts the pools
SETTLE_PAUSE = 8.0  # seconds between columns at least (see settle)
SETTLE_WINDOW = 0.5  # seconds of host CPU read at a time to tell it is quiet (see settle)
SETTLE_MARGIN = 0.25  # cores over the idle cluster's own use that still count as quiet
SETTLE_MAX_SECONDS = 20.0  # the longest a column waits for the host to quieten
OPTIONS: dict[str, Any] = dict(num_cpus=TIER.vcpu, memory=TIER.memory_bytes, max_retries=0)


def cluster_env() -> dict[str, str]:
    """The environment of the loopback cluster's processes, the same for both columns.

    ``RAY_num_workers_soft_limit``: how many idle workers a node keeps. Ray's default is
    the node's free CPUs (2 here), but a node runs up to ``num_cpus / 0.1`` = 20 nano
    tasks at once, each in its own worker, for each driver. With the default, a second
    after every burst Ray kills all but 2 of them and the next burst starts ~60 Python
    workers again on this 2-core VM: that churn (10-29 s a round) was most of both
    columns. An operator running fractional-CPU tiers sizes the limit the same way:
    the concurrency a node allows, times the drivers that share it -- plus headroom for
    the workers Ray prestarts for a queued backlog (the raw column queues 150 tasks and
    started ~6 more workers every round): at exactly 40 the idle-worker killer took 1-9 of
    the sylphx driver's workers every round, each restarted at 1-2 CPU-s of imports.
    ``TMPDIR``: where an unsandboxed shard's private scratch directory goes (tmpfs, like
    the control plane's home: see harness.BENCH_HOMES; raw Ray tasks create none).
    ``RAY_TMPDIR`` keeps Ray's own session files where they go by default."""
    per_node = int(NODE["num_cpus"] / TIER.vcpu)
    prestart_headroom = 24
    scratch = BENCH_HOMES / "ray-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_num_workers_soft_limit": str(DRIVERS * per_node + prestart_headroom),
        "TMPDIR": str(scratch),
        "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp"),
    }


def run_true(_: int) -> int:
    return subprocess.run(["true"], check=False).returncode


def run_enveloped(request: LaunchRequest, envelope: NodeEnvelope) -> int | str:
    """A Ray task body: the shard's own process in the very envelope a sylphx shard gets on
    this node (the same node code builds it: bubblewrap's two stages, the uid drop, the
    seccomp filter, slirp4netns, the tier's cgroup), its output read and dropped: what is
    left between this and sylphx is the control plane and the log shipping."""
    from sylphx._server.executors.ray.remote import run_streaming

    handle = f"bench:{request.run_id}:{request.index}"
    code, reason, _ = run_streaming(request, handle, envelope, lambda out, err: None)
    return code if code == 0 else f"{code}: {reason}"


def node_envelope(server_env: dict[str, str]) -> NodeEnvelope:
    """What the server hands its Ray nodes, from the same settings."""
    settings = Settings.from_env(server_env)
    return NodeEnvelope(settings.sandbox, not settings.unenforced_tiers, shard_policy(settings))


def request(index: int, n: int) -> LaunchRequest:
    """What sylphx asks of shard ``index`` of the benchmark's run (log paths unused)."""
    return LaunchRequest(
        run_id="bench", index=index, attempt=1, count=n, indexed=True, command=["true"],
        env={}, machine=TIER.name, stdout_path="", stderr_path="", working_dir=None,
    )  # fmt: skip


def raw_ray(n: int, envelope: NodeEnvelope | None = None) -> float:
    """All ``n`` tasks handed to Ray at once: Ray queues what does not fit, and a worker
    that finishes one task is handed the next one queued (its lease is reused).
    With ``envelope``, each task runs ``true`` in that envelope (``run_enveloped``)."""
    start = time.perf_counter()
    if envelope is None:
        codes = ray.get([ray.remote(run_true).options(**OPTIONS).remote(i) for i in range(n)])
    else:
        task = ray.remote(run_enveloped).options(**OPTIONS)
        codes = ray.get([task.remote(request(i, n), envelope) for i in range(n)])
    took = time.perf_counter() - start
    assert codes == [0] * n, Counter(codes)
    return took


def slots() -> int:
    """How many nano tasks the cluster runs at once (per node: CPU and memory both fit)."""
    alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return sum(
        min(int(r.get("CPU", 0) / TIER.vcpu), int(r.get("memory", 0) // TIER.memory_bytes))
        for r in alive
    )


def raw_ray_windowed(n: int, window: int) -> float:
    """The same tasks from a driver that, like any orchestrator owning admission, never
    hands Ray more than fit at once (``window``): a new task as each one ends. Ray then
    has nothing queued when a task ends, so every task after the first wave asks a raylet
    for a new worker lease -- what sylphx's Ray executor does too."""
    task = ray.remote(run_true).options(**OPTIONS)
    return windowed(task.remote, n, window)


def windowed(submit: Callable[[int], Any], n: int, window: int) -> float:
    """Seconds to run tasks ``submit(0..n-1)`` with at most ``window`` in flight."""
    start = time.perf_counter()
    pending = [submit(i) for i in range(min(window, n))]
    submitted, codes = len(pending), []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ready += ray.wait(pending, num_returns=len(pending), timeout=0)[0]
        pending = [ref for ref in pending if ref not in ready]
        codes += ray.get(ready)
        more = min(len(ready), n - submitted)
        pending += [submit(submitted + i) for i in range(more)]
        submitted += more
    took = time.perf_counter() - start
    assert codes == [0] * n, Counter(codes)
    return took


@ray.remote(num_cpus=0)
class BodyOwner:
    """Owns the node-body column's tasks as sylphx's hub owns its shards' (an actor, so
    that they outlive the control plane), and keeps ``window`` in flight as sylphx's
    admission does: sylphx's node body (``run_enveloped``) with no control plane around
    it. What sylphx takes over this column is the control plane's; what this column
    takes over raw Ray's is the node body's (log pipes, death with the worker, a private
    scratch directory) and the actor's."""

    def run(self, n: int, window: int, envelope: NodeEnvelope) -> float:
        task = ray.remote(run_enveloped).options(**OPTIONS)
        return windowed(lambda i: task.remote(request(i, n), envelope), n, window)


def booting_workers() -> int:
    """Ray workers on this host still starting (not yet renamed ``ray::...``): a Python
    whose script is ``default_worker.py`` (a raylet only names it inside its
    ``--python_worker_command=...``: it is not one)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            count += any(arg.endswith(b"/default_worker.py") for arg in f.read().split(b"\0"))
    return count


def busy_cores(window: float = SETTLE_WINDOW) -> float:
    """Cores this host kept busy over the next ``window`` seconds."""
    start = host_cpu()
    time.sleep(window)
    return (host_cpu() - start) / window


def idle_level(seconds: float = 3.0) -> float:
    """What the idle cluster itself keeps busy (its idle workers poll): the least of a
    few windows, read once the warm-up rounds have grown every pool."""
    return min(busy_cores() for _ in range(int(seconds / SETTLE_WINDOW)))


def settle(quiet: float) -> float:
    """Start a column only once the one before is done with the host: Ray prestarts
    workers for a backlog and keeps booting them after the column ended (1-2 CPU-s each
    on this 2-core VM), and the cluster stays busy for a while after a column's tasks
    ended. So wait until no worker is booting and the host's CPU is back at the idle
    cluster's ``quiet`` level (cores), and at least ``SETTLE_PAUSE``: the CPU alone does
    not tell it. Measured: raw Ray's column took 1.48 s (median of 6) one second after
    the one before, 1.14 s eight seconds after it, and 1.44 s once the CPU was quiet
    (0.8 s after, median). Returns the seconds waited (``SETTLE_MAX_SECONDS``: it
    never got that quiet)."""
    start = time.monotonic()
    deadline = start + SETTLE_MAX_SECONDS
    time.sleep(SETTLE_PAUSE)
    while booting_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    while time.monotonic() < deadline and busy_cores() > quiet + SETTLE_MARGIN:
        pass
    return min(time.monotonic() - start, SETTLE_MAX_SECONDS)


def per_shard(
    envelope: str, n: int, quiet: float, took: dict[str, list[float]], cpu: dict[str, list[float]]
) -> str:
    """Each column's host CPU per shard, less what the idle cluster burned meanwhile, and
    the cores it kept busy (medians of the rounds), by the columns' short names (raw,
    win: 48 in flight, env: same envelope, body: node body, syl: sylphx). Every column
    keeps this 2-core host busy, so a round takes its work over the cores the idle cluster
    leaves, and a column's ratio to another is about the ratio of their CPU per shard
    (BENCHMARKS.md, P6). The idle burn is ``quiet``, read once after the warm-ups; it grows
    over a run, so later rounds' work reads a little high, for every column alike."""
    cells = []
    for name in took:
        work = [(c - quiet * t) / n * 1e3 for c, t in zip(cpu[name], took[name], strict=True)]
        busy = [c / t for c, t in zip(cpu[name], took[name], strict=True)]
        cells.append(
            f"{name} {summary(work)['median']:.1f} ms ({summary(busy)['median']:.2f} cores)"
        )
    return f"{envelope}, {n} shards: host CPU per shard beyond the idle cluster's: " + ", ".join(
        cells
    )


def compare(address: str, envelope: str, n: int, rounds: int, window: int) -> list[str]:
    """Warm every side up, then ``rounds`` rounds, each column from a settled host, in an
    order rotated every round (so no column always follows the same one); one row."""
    with Server(SYLPHX_EXECUTOR="ray", SYLPHX_RAY_ADDRESS=address, **ENVELOPES[envelope]) as srv:
        same = node_envelope(srv.env)
        owner: Any = BodyOwner.remote()  # type: ignore[attr-defined]
        columns: dict[str, Callable[[], float]] = {
            "raw": lambda: raw_ray(n),
            "win": lambda: raw_ray_windowed(n, window),
            "env": lambda: raw_ray(n, same),
            "body": lambda: ray.get(owner.run.remote(n, window, same)),
            "syl": lambda: srv.fan_out(n),
        }
        for _ in range(WARM_ROUNDS):  # the pools grown, imports done, the store warm
            for column in columns.values():
                column()
        time.sleep(SETTLE_MAX_SECONDS / 2)  # the last warm-up's tail
        quiet = idle_level()
        print(f"{envelope}: the idle cluster keeps {quiet:.2f} cores busy", flush=True)
        took: dict[str, list[float]] = {name: [] for name in columns}
        cpu: dict[str, list[float]] = {name: [] for name in columns}  # host CPU-s a round
        waited: list[float] = []
        names = list(columns)
        for r in range(rounds):
            turn = r % len(names)
            for name in names[turn:] + names[:turn]:
                waited.append(settle(quiet))
                before = host_cpu()
                took[name].append(columns[name]())
                cpu[name].append(host_cpu() - before)
    capped = sum(w >= SETTLE_MAX_SECONDS for w in waited)
    print(
        f"{envelope}, {n} shards: each column waited {summary(waited)['median']:.1f} s"
        f" (median) for a quiet host; {capped} of {len(waited)} hit the"
        f" {SETTLE_MAX_SECONDS:g} s cap",
        flush=True,
    )
    print(per_shard(envelope, n, quiet, took, cpu), flush=True)
    raw, win, env, body, syl = (summary(took[name]) for name in names)
    cell = "{0[median]:.3f} ({0[min]:.3f}-{0[max]:.3f})".format
    return [
        envelope,
        cell(raw),
        cell(win),
        cell(env),
        cell(body),
        cell(syl),
        f"{syl['median'] / raw['median']:.2f}x",
        f"{syl['median'] / env['median']:.2f}x",
        f"{body['median'] / raw['median']:.2f}x",
        f"{syl['median'] / body['median']:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="200,256", help="comma-separated run sizes")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side")
    parser.add_argument("--envelopes", default="plain,sandboxed", help="comma-separated")
    parser.add_argument("--address", help="an existing Ray cluster (default: start 3 nodes)")
    args = parser.parse_args()
    print(f"P6 on {machine()}")

    cluster = None
    address = args.address
    if address is None:
        from ray.cluster_utils import Cluster

        env = cluster_env()
        print("cluster config:", " ".join(f"{k}={v}" for k, v in env.items()))
        os.environ.update(env)  # the nodes are this process's children
        cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(NODE, node_ip_address="127.0.0.1", include_dashboard=False),
        )
        for _ in range(2):
            cluster.add_node(**NODE, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        address = cluster.address
    ray.init(address=address, namespace="bench", log_to_driver=False)
    try:
        res = ray.cluster_resources()
        print(
            f"cluster: {len(ray.nodes())} nodes, {res['CPU']:g} CPU, {res['memory'] / 2**30:g} GiB"
        )
        window = slots()
        for n in (int(size) for size in args.shards.split(",")):
            rows = [compare(address, e, n, args.rounds, window) for e in args.envelopes.split(",")]
            table(
                f"P6: {n} trivial shards (`true`, nano) on a {len(ray.nodes())}-node loopback"
                f" Ray cluster; seconds, median (min-max) of {args.rounds} rounds after"
                f" {WARM_ROUNDS} warm-up rounds; goal <= 1.3x against raw Ray (plain) and"
                " against raw Ray in the same envelope (sandboxed)",
                [
                    "envelope",
                    "raw Ray tasks (`true`)",
                    f"raw, {window} in flight",
                    "raw Ray, same envelope",
                    f"node body, {window} in flight",
                    "sylphx (Ray executor)",
                    "sylphx / raw",
                    "sylphx / same envelope",
                    "node body / raw",
                    "sylphx / node body",
                ],
                rows,
            )
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
