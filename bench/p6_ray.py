"""P6: overhead of the sylphx Ray executor over raw Ray tasks, on the same cluster, in one run.

Both sides run the same trivial workload: N shards (default 200), each a real ``true``
process asking for the nano tier (0.1 vCPU / 256 MiB). sylphx goes end to end through its
HTTP API (a ``sylphx server`` subprocess driving the cluster: submit, admission, one Ray task
per shard, log shipping, store writes, aggregate; the client long-polls for the end).
The baseline submits N Ray tasks that each run ``true`` with the same resources and waits;
a second baseline does the same from a driver that keeps at most as many tasks in flight
as the cluster runs at once (as an orchestrator that owns admission must), which tells the
cost of not queueing in Ray from the cost of sylphx.
Each envelope (``plain``: the goal row, the same process on both sides; ``sandboxed``:
bubblewrap per shard, the production default) gets its own server, its own warm-up and
its own baseline rounds, interleaved with sylphx's.

The loopback cluster is configured once, for both sides alike (see ``cluster_env``): Ray
keeps enough idle workers per node for the two drivers' fractional-CPU bursts, instead of
killing all but ~2 a second after every burst and starting them again in the next one.

    python bench/p6_ray.py                 # a 3-node loopback cluster it starts itself
    python bench/p6_ray.py --address H:P   # an existing cluster (its own configuration)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback

import ray
from harness import BENCH_HOMES, ENVELOPES, Server, machine, summary, table

from sylphx._core.machines import MACHINES

TIER = MACHINES["nano"]
NODE = dict(num_cpus=2, memory=4 << 30, object_store_memory=80 << 20, num_gpus=0)
DRIVERS = 2  # Ray keeps a worker pool per driver (job): this script's and the server's
WARM_ROUNDS = 2  # full-size rounds per side before timing: the first starts the pools


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


def raw_ray(n: int) -> float:
    """All ``n`` tasks handed to Ray at once: Ray queues what does not fit, and a worker
    that finishes one task is handed the next one queued (its lease is reused)."""
    task = ray.remote(run_true).options(num_cpus=TIER.vcpu, memory=TIER.memory_bytes, max_retries=0)
    start = time.perf_counter()
    codes = ray.get([task.remote(i) for i in range(n)])
    took = time.perf_counter() - start
    assert codes == [0] * n
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
    task = ray.remote(run_true).options(num_cpus=TIER.vcpu, memory=TIER.memory_bytes, max_retries=0)
    start = time.perf_counter()
    pending = [task.remote(i) for i in range(min(window, n))]
    submitted, codes = len(pending), []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ready += ray.wait(pending, num_returns=len(pending), timeout=0)[0]
        pending = [ref for ref in pending if ref not in ready]
        codes += ray.get(ready)
        more = min(len(ready), n - submitted)
        pending += [task.remote(submitted + i) for i in range(more)]
        submitted += more
    took = time.perf_counter() - start
    assert codes == [0] * n
    return took


def compare(address: str, envelope: str, n: int, rounds: int, window: int) -> list[str]:
    """Warm both sides up, then ``rounds`` interleaved rounds; one table row."""
    with Server(SYLPHX_EXECUTOR="ray", SYLPHX_RAY_ADDRESS=address, **ENVELOPES[envelope]) as srv:
        for _ in range(WARM_ROUNDS):  # both pools grown, imports done, the store warm
            raw_ray(n), raw_ray_windowed(n, window), srv.fan_out(n)
        raw_t, win_t, syl_t = [], [], []
        for _ in range(rounds):  # interleaved, so drift hits every column alike
            raw_t.append(raw_ray(n))
            win_t.append(raw_ray_windowed(n, window))
            syl_t.append(srv.fan_out(n))
    raw, win, syl = summary(raw_t), summary(win_t), summary(syl_t)
    return [
        envelope,
        f"{raw['median']:.3f} ({raw['min']:.3f}-{raw['max']:.3f})",
        f"{win['median']:.3f} ({win['min']:.3f}-{win['max']:.3f})",
        f"{syl['median']:.3f} ({syl['min']:.3f}-{syl['max']:.3f})",
        f"{syl['median'] / raw['median']:.2f}x",
        f"{win['median'] / raw['median']:.2f}x",
        f"{syl['median'] / win['median']:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
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
        rows = [
            compare(address, e, args.shards, args.rounds, window) for e in args.envelopes.split(",")
        ]
        table(
            f"P6: {args.shards} trivial shards (`true`, nano) on a {len(ray.nodes())}-node"
            f" loopback Ray cluster; seconds, median (min-max) of {args.rounds} rounds after"
            f" {WARM_ROUNDS} warm-up rounds; goal <= 1.3x (plain)",
            [
                "envelope",
                "raw Ray tasks",
                f"raw, {window} in flight",
                "sylphx (Ray executor)",
                "sylphx / raw",
                "windowed / raw",
                "sylphx / windowed",
            ],
            rows,
        )
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
