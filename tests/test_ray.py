"""Ray-only behaviour on the session's real loopback cluster: node loss, capacity that follows
the nodes, gang placement groups and volumes under SYLPHX_RAY_VOLUME_ROOT."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.util.placement_group import placement_group_table

from conftest import RAY_NODE, Server, pids_of_run
from oci import BusyboxImages

pytestmark = pytest.mark.slow


# A shard that writes down, in its volume, when its process started and ended ($m: a path).
CLOCKED = 'date +%s.%N > "$m.start"; sleep 6; date +%s.%N > "$m.end"'


def _gap(stamp: str | None, mark: Path) -> float | None:
    """Seconds from the time in ``mark`` (a shard wrote it) to the ISO ``stamp``."""
    if stamp is None or not mark.exists():
        return None
    return round(datetime.fromisoformat(stamp).timestamp() - float(mark.read_text()), 3)


def cpus(server: Server) -> int:
    return server.plane.executor.capacity().millicpu // 1000


def test_killed_node_shards_are_retried_elsewhere_without_using_budget(
    ray_server: Server, ray_cluster: Any
) -> None:
    base = cpus(ray_server)
    extra = ray_cluster.add_node(**RAY_NODE, node_ip_address="127.0.0.1", num_gpus=0)
    ray_cluster.wait_for_nodes()
    ray_server.wait_for(lambda: cpus(ray_server) == base + 2)  # capacity follows a join
    vol, marks = ray_server.volume()  # shards cannot write host paths: only their volumes
    # 12 x standard (1 vCPU) on 8 vCPU: every slot is busy, 2 of them on the extra node.
    # (6 s each: a sandbox's start, ~0.1 s, is billed too -- it runs for the shard.)
    # backoffLimitPerIndex 0: a node loss that used the budget would fail its shard. Each
    # process writes down when it started and ended: the run time billing must match.
    run = ray_server.submit(
        command=["sh", "-c", f'm="/m/$SYLPHX_SHARD_INDEX.$SYLPHX_SHARD_ATTEMPT"; {CLOCKED}'],
        parallelism=12,
        machine="standard",
        gangScheduling=False,
        backoffLimitPerIndex=0,
        volumeMounts=[{"volumeId": vol, "mountPath": "/m"}],
    )
    ray_server.wait_for(lambda: len(list(marks.glob("*.start"))) == base + 2)
    lost_at = time.time()
    ray_cluster.remove_node(extra, allow_graceful=False)
    done = ray_server.wait(run["id"], timeout=120)
    assert done["status"] == "succeeded", done
    # Billed: each attempt's own window -- not the time Ray took to notice the node gone,
    # nor a relaunch waiting in Ray's queue (lost shards wait in sylphx's, as pending).
    ran = lost = 0.0  # the windows lost with the node are recorded, not billed (#21)
    for start in marks.glob("*.start"):
        end = start.with_suffix(".end")
        if end.exists():
            ran += float(end.read_text()) - float(start.read_text())
        else:
            lost += lost_at - float(start.read_text())
    windows = [  # per attempt: billed start - own start, billed end - own end (debugging)
        (
            shard["index"],
            attempt["attempt"],
            _gap(attempt["startedAt"], marks / f"{shard['index']}.{attempt['attempt']}.start"),
            _gap(attempt["endedAt"], marks / f"{shard['index']}.{attempt['attempt']}.end"),
        )
        for shard in ray_server.shards(run["id"])
        for attempt in shard["history"]
    ]
    assert abs(done["computeSeconds"] - ran) <= 0.05 * ran, (done["computeSeconds"], ran, windows)
    unbilled = ray_server.http.get("/v1/usage").json()["unbilledSeconds"]
    assert lost > 0 and unbilled >= 0.5 * lost, (unbilled, lost)
    shards = ray_server.shards(run["id"])
    lost = [s for s in shards if s["attempts"] > 1]
    assert 1 <= len(lost) <= 2, shards
    for shard in lost:
        first, second = shard["history"]
        assert first["status"] == "preempted"  # a lost attempt is a preemption
        assert first["reason"].startswith("NodeLost: node "), first
        assert (second["status"], second["reason"]) == ("succeeded", "Completed")
    assert all(s["attempts"] == 1 for s in shards if s not in lost)
    assert all(s["preemptions"] == 1 for s in lost), lost
    ray_server.wait_for(lambda: cpus(ray_server) == base)  # ...and a node leaving


def test_gang_is_one_placement_group_of_n_bundles_released_after(ray_server: Server) -> None:
    run = ray_server.submit(
        command=["sleep", "1"], parallelism=3, machine="standard", gangScheduling=True
    )

    def group() -> dict[str, Any] | None:
        table = placement_group_table()
        found = [g for g in table.values() if g["name"] == f"sylphx-{run['id']}"]
        return found[0] if found else None

    ray_server.wait_for(lambda: group() is not None)
    pg = group()
    assert pg is not None and pg["strategy"] == "SPREAD"
    assert list(pg["bundles"].values()) == [{"CPU": 1.0, "memory": float(2 << 30)}] * 3
    assert ray_server.wait(run["id"])["status"] == "succeeded"
    ray_server.wait_for(lambda: (g := group()) is None or g["state"] == "REMOVED")


def test_volumes_live_under_the_shared_root(
    make_server: Callable[..., Server], ray_cluster: Any, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-fs"
    server = make_server(executor="ray", ray_address=ray_cluster.address, ray_volume_root=shared)
    vol = server.http.post("/v1/volumes", json={"name": "results"}).json()
    run = server.submit(
        command=["sh", "-c", 'echo "part $SYLPHX_SHARD_INDEX" > /out/part-$SYLPHX_SHARD_INDEX'],
        parallelism=3,
        machine="nano",
        gangScheduling=False,
        volumeMounts=[{"volumeId": vol["id"], "mountPath": "/out"}],
    )
    assert server.wait(run["id"])["status"] == "succeeded"
    assert sorted(p.read_text() for p in (shared / vol["id"]).iterdir()) == [
        f"part {i}\n" for i in range(3)
    ]


def test_capacity_is_the_clusters(ray_server: Server) -> None:
    total = ray.cluster_resources()
    cap = ray_server.plane.executor.capacity()
    assert cap.millicpu == round(total["CPU"] * 1000)
    assert cap.memory == int(total["memory"])
    health = ray_server.http.get("/healthz").json()
    assert health["executor"] == "ray" and health["capacity"] == cap.text()


def test_ray_shards_get_the_local_envelope(ray_server: Server, tmp_path: Path) -> None:
    """Same sandbox and clean env as the local executor, built on the Ray node (its cgroup,
    which the shard's cgroup namespace hides from it, is checked from the host in
    test_ray_envelope)."""
    script = (
        "if touch /escape-ray 2>/dev/null; then exit 3; fi;"  # read-only host root
        f" touch {tmp_path}/escape 2>/dev/null;"  # /tmp is the sandbox's own
        " if env | grep -q '^RAY_'; then exit 4; fi;"  # nothing from the Ray worker
        ' [ "$(hostname)" = sylphx-shard ] || exit 5;'
        ' [ "$TOKEN" = s3cret ] || exit 7'
    )
    run = ray_server.submit(
        command=["sh", "-c", script], parallelism=2, machine="nano", env={"TOKEN": "s3cret"}
    )
    done = ray_server.wait(run["id"])
    assert done["status"] == "succeeded", [
        (s["exitCode"], s["reason"]) for s in ray_server.shards(run["id"])
    ]
    assert not (tmp_path / "escape").exists() and not Path("/escape-ray").exists()


def test_tier_larger_than_every_node_fails_with_the_numbers(ray_server: Server) -> None:
    # xlarge (4 vCPU / 8 GiB) fits the cluster's 6 vCPU in total but no 2-vCPU node:
    # refused at launch with the numbers, never a Ray task pending forever
    run = ray_server.submit(command=["true"], machine="xlarge")
    assert ray_server.wait(run["id"])["status"] == "failed"
    (shard,) = ray_server.shards(run["id"])
    assert shard["exitCode"] == 127 and shard["reason"].startswith("LaunchError")
    assert "the largest Ray node has 2 vCPU / 4 GiB" in shard["reason"]


def test_an_image_run_is_refused_at_submit_where_nodes_cannot_run_images(
    make_server: Callable[..., Server], ray_cluster: Any, busybox_images: BusyboxImages
) -> None:
    server = make_server(executor="ray", ray_address=ray_cluster.address, sandbox=False)
    r = server.http.post(
        "/v1/runs", json={"image": f"oci:{busybox_images.layout}:latest", "command": ["true"]}
    )
    assert r.status_code == 422, r.text
    assert r.json()["details"][0]["field"] == "image"
    assert "sandbox" in r.json()["message"]
    assert server.http.get("/v1/runs").json()["items"] == []  # nothing stored


def test_a_shard_that_leaves_processes_behind_leaves_none_in_its_slot(
    ray_server: Server,
) -> None:
    """A slot runs attempt after attempt, of any run or org, in one Ray worker: what a
    tenant's shard starts in the background and detaches (its own session) must be gone
    from the host once its attempt ended, before the slot runs the next one."""
    left = "setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 & sleep 300 & exit 0"
    first = ray_server.submit(
        command=["sh", "-c", left], parallelism=4, machine="nano", gangScheduling=False
    )
    assert ray_server.wait(first["id"], timeout=120)["status"] == "succeeded"
    ray_server.wait_for(lambda: not pids_of_run(first["id"]), timeout=10)  # host side
    after = ray_server.submit(  # the same slots, if they are still idle: nothing of first's
        command=["sh", "-c", "test -z \"$(pgrep -f 'slee[p] 300')\""],  # not itself
        parallelism=4,
        machine="nano",
        gangScheduling=False,
    )
    assert ray_server.wait(after["id"], timeout=120)["status"] == "succeeded"
    assert not pids_of_run(first["id"])
