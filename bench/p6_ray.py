"""P6: overhead of the sylphx Ray executor over raw Ray tasks, on the same cluster, in one run.

Both sides run the same trivial workload: N shards (default 200), each a real ``true``
process asking for the nano tier (0.1 vCPU / 256 MiB). sylphx goes end to end through its
HTTP API (a ``sylphx server`` subprocess driving the cluster: submit, admission, one Ray task
per shard, log shipping, store writes, aggregate; the client polls every 5 ms);
the baseline submits N Ray tasks that each run ``true`` with the same resources and waits.

    python bench/p6_ray.py                 # a 3-node loopback cluster it starts itself
    python bench/p6_ray.py --address H:P   # an existing cluster (this host a node)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback

import ray
from harness import Server, machine, summary, table

from sylphx._machines import MACHINES

TIER = MACHINES["nano"]
NODE = dict(num_cpus=2, memory=4 << 30, object_store_memory=80 << 20, num_gpus=0)


def run_true(_: int) -> int:
    return subprocess.run(["true"], check=False).returncode


def raw_ray(n: int) -> float:
    task = ray.remote(run_true).options(num_cpus=TIER.vcpu, memory=TIER.memory_bytes, max_retries=0)
    start = time.perf_counter()
    codes = ray.get([task.remote(i) for i in range(n)])
    took = time.perf_counter() - start
    assert codes == [0] * n
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side")
    parser.add_argument("--address", help="an existing Ray cluster (default: start 3 nodes)")
    args = parser.parse_args()
    print(f"P6 on {machine()}")

    cluster = None
    address = args.address
    if address is None:
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(NODE, node_ip_address="127.0.0.1", include_dashboard=False),
        )
        for _ in range(2):
            cluster.add_node(**NODE, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        address = cluster.address
    ray.init(address=address, namespace="bench", log_to_driver=False)
    server = Server(SYLPHX_EXECUTOR="ray", SYLPHX_RAY_ADDRESS=address)
    try:
        res = ray.cluster_resources()
        print(
            f"cluster: {len(ray.nodes())} nodes, {res['CPU']:g} CPU, {res['memory'] / 2**30:g} GiB"
        )
        raw_ray(20), server.fan_out(20)  # warm both up: workers, imports, the store
        raw_t, syl_t = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
            raw_t.append(raw_ray(args.shards))
            syl_t.append(server.fan_out(args.shards))
        raw, syl = summary(raw_t), summary(syl_t)
        n = args.shards
        table(
            f"P6: {n} trivial shards (`true`, nano) on a {len(ray.nodes())}-node loopback Ray"
            f" cluster; seconds, median (min-max) of {args.rounds} rounds; goal <= 1.3x",
            ["raw Ray tasks", "sylphx (Ray executor)", "ratio"],
            [
                [
                    f"{raw['median']:.3f} ({raw['min']:.3f}-{raw['max']:.3f})",
                    f"{syl['median']:.3f} ({syl['min']:.3f}-{syl['max']:.3f})",
                    f"{syl['median'] / raw['median']:.2f}x",
                ]
            ],
        )
    finally:
        server.close()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
