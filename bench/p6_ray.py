"""Overhead of the sylphx Ray executor over raw Ray tasks, on the same cluster, in one run.

Both sides run the same trivial workload: N shards (default 200), each a real ``true``
process asking for the nano tier (0.1 vCPU / 256 MiB). sylphx goes end to end through its
HTTP API (submit, admission, one Ray task per shard, log shipping, store writes, aggregate);
the baseline submits N Ray tasks that each run ``true`` with the same resources and waits.

    python bench/ray_overhead.py                 # a 3-node loopback cluster it starts itself
    python bench/ray_overhead.py --address H:P   # an existing cluster (this host a node)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback

import httpx
import ray
import uvicorn

from sylphx._machines import MACHINES
from sylphx._server import ControlPlane, create_app, orgs
from sylphx._settings import Settings

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


class Plane:
    """A sylphx control plane (Ray executor) on a loopback port, with an HTTP client."""

    def __init__(self, home: Path, address: str) -> None:
        settings = Settings(
            home=home,
            database_url=f"sqlite:///{home / 'sylphx.db'}",
            executor="ray",
            ray_address=address,
        )
        self.plane = ControlPlane(settings)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.plane), log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        port = self.sock.getsockname()[1]
        with self.plane.sessions.begin() as s:  # every API call needs an org's key
            orgs.create_org(s, "bench", plan="enterprise", now=self.plane.now(), org_id="org_b")
            token = orgs.create_key(s, "org_b", name="bench", now=self.plane.now())[1]
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )

    def run(self, n: int) -> float:
        spec: dict[str, Any] = {
            "command": ["true"],
            "parallelism": n,
            "machine": "nano",
            "gangScheduling": False,
        }
        start = time.perf_counter()
        r = self.http.post("/v1/runs", json=spec)
        r.raise_for_status()
        run_id = r.json()["id"]
        while True:
            status = self.http.get(f"/v1/runs/{run_id}").json()["status"]
            if status not in ("queued", "running"):
                break
            time.sleep(0.2)  # like a client's wait(); each GET loads all N shards
        took = time.perf_counter() - start
        assert status == "succeeded", status
        return took

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per side (best)")
    parser.add_argument("--address", help="an existing Ray cluster (default: start 3 nodes)")
    args = parser.parse_args()

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
    ray.init(address=address, namespace="sylphx", log_to_driver=False)
    home = Path(tempfile.mkdtemp(prefix="sylphx-bench-"))
    plane = Plane(home, address)
    try:
        res = ray.cluster_resources()
        print(
            f"cluster: {len(ray.nodes())} nodes, {res['CPU']:g} CPU, {res['memory'] / 2**30:g} GiB"
        )
        raw_ray(20), plane.run(20)  # warm both up: worker processes, imports, the store
        raw_t, syl_t = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
            raw_t.append(raw_ray(args.shards))
            syl_t.append(plane.run(args.shards))
        raw, syl = min(raw_t), min(syl_t)
        n = args.shards
        print(f"\n{n} trivial shards (`true`, nano tier), best of {args.rounds}")
        print(f"{'path':<26}{'seconds':>9}{'shards/s':>10}")
        print(f"{'raw Ray tasks':<26}{raw:>9.2f}{n / raw:>10.1f}")
        print(f"{'sylphx (Ray executor)':<26}{syl:>9.2f}{n / syl:>10.1f}")
        print(f"ratio sylphx / raw: {syl / raw:.2f}x (goal <= 1.3x)")
    finally:
        plane.close()  # the app's lifespan stops the control plane
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
