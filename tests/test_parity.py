"""Parity of the two executors (issue #19 item 7): the same specs run on the local executor
and on the session's real 3-node loopback Ray cluster, with the same expected outcome
(statuses, per-attempt exit codes and reasons, logs, volume contents, billing). The
faults (preemption by a gang, a lost node or supervisor) are in test_parity_faults."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Server
from oci import BusyboxImages
from sylphx._core.errors import ExecutorError
from sylphx._core.machines import MACHINES
from sylphx._server.executors.local.cgroups import Cgroups

pytestmark = pytest.mark.slow

WAIT = 120  # seconds a run may take to end: generous, for a loaded 2-core host

Outcome = list[tuple[int, str, list[tuple[str, int | None, str]]]]


@pytest.fixture(name="kind", params=["local", "ray"])
def kind_fixture(request: pytest.FixtureRequest) -> str:
    """The executor under test."""
    return str(request.param)


@pytest.fixture(name="start")
def start_fixture(
    kind: str, make_server: Callable[..., Server], request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., Server]:
    """Start a control plane on ``kind`` (3 s from SIGTERM to SIGKILL: every shard here
    that is stopped ends on SIGTERM at once; Ray: the session's cluster, images unpacked
    under the test's own folder)."""

    def start(**overrides: Any) -> Server:
        if kind == "ray":
            cluster = request.getfixturevalue("ray_cluster")
            ray = dict(ray_address=cluster.address, ray_image_cache=tmp_path / "node-images")
            overrides = {"executor": "ray", **ray, **overrides}
        return make_server(preemption_grace_seconds=3.0, kill_grace_seconds=3.0, **overrides)

    return start


@pytest.fixture
def server(start: Callable[..., Server]) -> Server:
    """Local: 2 vCPU / 8 GiB; Ray: 3 nodes of 2 vCPU / 4 GiB."""
    return start()


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def outcome(server: Server, run_id: str) -> Outcome:
    """Per shard: index, status, and each attempt's (status, exit code, reason's kind)."""
    return [
        (
            s["index"],
            s["status"],
            [(a["status"], a["exitCode"], (a["reason"] or "").split(":")[0]) for a in s["history"]],
        )
        for s in server.shards(run_id)
    ]


def logs(server: Server, run_id: str, shard: int = 0, **params: Any) -> str:
    params = {"shard": shard, **params}
    return server.http.get(f"/v1/runs/{run_id}/logs", params=params).text


def billed(server: Server, run_id: str) -> dict[tuple[int, int], float]:
    """Each started attempt's metered window in seconds by (index, attempt), after checking
    that the run's ``computeSeconds`` and the org's usage report are those windows times the
    tier's units -- the preempted ones (the platform's doing) recorded apart, not billed."""
    run = server.get(run_id)
    units = MACHINES[run["spec"]["machine"]].units
    walls, unpaid = {}, 0.0
    for shard in server.shards(run_id):
        for a in shard["history"]:
            if a["startedAt"] and a["endedAt"]:
                wall = (at(a["endedAt"]) - at(a["startedAt"])).total_seconds()
                walls[shard["index"], a["attempt"]] = wall
                unpaid += wall if a["status"] == "preempted" else 0.0
    paid = sum(walls.values()) - unpaid
    assert run["computeSeconds"] == pytest.approx(paid * units, abs=0.01), walls
    usage = server.http.get("/v1/usage").json()
    by_run = {row["runId"]: row for row in usage["byRun"]}
    row = by_run.get(run_id, {"computeSeconds": 0.0, "unbilledSeconds": 0.0})
    assert row["computeSeconds"] == pytest.approx(run["computeSeconds"], abs=0.01)
    assert row["unbilledSeconds"] == pytest.approx(unpaid * units, abs=0.01)
    return walls


def test_gang_starts_every_shard_together_and_bills_the_commands_time(server: Server) -> None:
    vol, out = server.volume()
    run = server.submit(
        command=sh(
            'echo "$SYLPHX_SHARD_INDEX/$SYLPHX_SHARD_COUNT"; sleep 1; touch /o/$SYLPHX_SHARD_INDEX'
        ),
        parallelism=3,
        machine="nano",
        gangScheduling=True,
        volumeMounts=[{"volumeId": vol, "mountPath": "/o"}],
    )
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "succeeded", done
    assert outcome(server, run["id"]) == [
        (i, "succeeded", [("succeeded", 0, "Completed")]) for i in range(3)
    ]
    assert [logs(server, run["id"], i) for i in range(3)] == [f"{i}/3\n" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2"]
    shards = server.shards(run["id"])
    starts = [at(s["history"][0]["startedAt"]) for s in shards]
    assert (max(starts) - min(starts)).total_seconds() < 2.0, starts  # admitted as one
    # running (and billed) from the process's start to its end: no placement wait
    assert all(1.0 <= wall < 2.5 for wall in billed(server, run["id"]).values())


def test_opportunistic_shard_failing_once_is_retried_within_its_budget(server: Server) -> None:
    run = server.submit(
        command=sh(
            'echo "try $SYLPHX_SHARD_ATTEMPT";'
            ' [ "$SYLPHX_SHARD_INDEX" = 1 ] && [ "$SYLPHX_SHARD_ATTEMPT" = 1 ] && exit 3; exit 0'
        ),
        parallelism=3,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=2,
    )
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "succeeded", done
    ok = ("succeeded", 0, "Completed")
    assert outcome(server, run["id"]) == [
        (0, "succeeded", [ok]),
        (1, "succeeded", [("failed", 3, "Error"), ok]),
        (2, "succeeded", [ok]),
    ]
    assert logs(server, run["id"], 1, attempt=1) == "try 1\n"
    assert logs(server, run["id"], 1) == "try 2\n"
    assert [s["preemptions"] for s in server.shards(run["id"])] == [0, 0, 0]
    assert len(billed(server, run["id"])) == 4


def test_per_shard_timeout_ends_the_shard_timed_out(server: Server) -> None:
    run = server.submit(
        command=sh('[ "$SYLPHX_SHARD_INDEX" = 0 ] || exec sleep 60'),
        parallelism=2,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=2,  # a deadline is a decision, not a fault: never retried
        timeoutSeconds=1,
    )
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "partial", done
    assert outcome(server, run["id"]) == [
        (0, "succeeded", [("succeeded", 0, "Completed")]),
        (1, "timed_out", [("timed_out", 143, "DeadlineExceeded")]),
    ]
    assert 0.9 <= billed(server, run["id"])[1, 1] < 4  # the deadline, then SIGTERM


def test_cancel_mid_run_stops_every_shard(server: Server) -> None:
    vol, out = server.volume()
    run = server.submit(
        command=sh(
            "trap 'echo term; exit 143' TERM; touch /o/$SYLPHX_SHARD_INDEX; sleep 60 & wait"
        ),
        parallelism=3,
        machine="nano",
        gangScheduling=False,
        volumeMounts=[{"volumeId": vol, "mountPath": "/o"}],
    )
    server.wait_for(lambda: len(list(out.iterdir())) == 3, timeout=60)  # traps set
    assert server.http.post(f"/v1/runs/{run['id']}/cancel").status_code == 202
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "cancelled", done
    assert done["aggregate"]["cancelled"] == 3
    assert outcome(server, run["id"]) == [
        (i, "cancelled", [("cancelled", 143, "Cancelled")]) for i in range(3)
    ]
    assert [logs(server, run["id"], i) for i in range(3)] == ["term\n"] * 3  # SIGTERM first
    assert all(0 < wall < 10 for wall in billed(server, run["id"]).values())


def test_a_shard_past_its_tiers_memory_is_oomkilled_while_siblings_succeed(
    start: Callable[..., Server],
) -> None:
    try:  # both executors enforce tiers with this code (Ray: on the node, here this host)
        Cgroups().check()
    except ExecutorError as exc:  # (before a control plane, which would refuse to start)
        pytest.skip(f"this host cannot enforce machine tiers with cgroups: {exc}")
    server = start()
    grab = "b = bytearray(400 << 20); b[::4096] = b'x' * len(b[::4096])"
    run = server.submit(
        command=sh(
            f'[ "$SYLPHX_SHARD_INDEX" = 1 ] && exec {sys.executable} -c "{grab}"; echo fine'
        ),
        parallelism=3,
        machine="nano",  # a 256 MiB ceiling
        gangScheduling=False,
        backoffLimitPerIndex=0,
    )
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "partial", done
    ok = ("succeeded", 0, "Completed")
    assert outcome(server, run["id"]) == [
        (0, "succeeded", [ok]),
        (1, "failed", [("failed", 137, "OOMKilled")]),
        (2, "succeeded", [ok]),
    ]
    assert logs(server, run["id"], 2) == "fine\n"


def test_a_merge_step_merges_the_parts_fed_a_read_only_manifest(server: Server) -> None:
    vol, out = server.volume()
    merge = (
        '(echo x >> "$SYLPHX_MANIFEST") 2>/dev/null && echo WRITABLE;'
        ' grep -c \'"status": "succeeded"\' "$SYLPHX_MANIFEST";'
        " cat /cache/part-* | tee /cache/merged"
    )
    run = server.submit(
        command=sh('echo "part $SYLPHX_SHARD_INDEX" > /cache/part-$SYLPHX_SHARD_INDEX'),
        parallelism=4,
        machine="nano",
        volumeMounts=[{"volumeId": vol, "mountPath": "/cache"}],
        merge={"command": sh(merge), "machine": "micro"},
    )
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "succeeded" and done["merge"]["status"] == "succeeded", done
    merged = "".join(f"part {i}\n" for i in range(4))
    log = server.http.get(f"/v1/runs/{run['id']}/logs", params={"merge": "true"}).text
    assert log == "4\n" + merged  # and never WRITABLE
    assert sorted(p.name for p in out.iterdir()) == ["merged", *(f"part-{i}" for i in range(4))]
    assert (out / "merged").read_text() == merged
    usage = server.http.get("/v1/usage").json()
    assert {row["machine"] for row in usage["byMachine"]} == {"nano", "micro"}, usage


VALUE = "postgres://admin:hunter2-Zq8@db.internal/prod"


def test_a_granted_secret_reaches_its_shards_and_is_masked_in_their_logs(server: Server) -> None:
    assert (
        server.http.post("/v1/secrets", json={"name": "DB_URL", "value": VALUE}).status_code == 201
    )
    vol, out = server.volume()
    show = sh(
        'echo "url=${DB_URL:-unset}"; echo "err $DB_URL" >&2;'
        ' printf %s "${DB_URL:-unset}" > /o/$SYLPHX_RUN_ID-$SYLPHX_SHARD_INDEX'
    )
    mount = [{"volumeId": vol, "mountPath": "/o"}]
    granted = server.submit(
        command=show, secrets=["DB_URL"], parallelism=2, machine="nano", volumeMounts=mount
    )
    other = server.submit(command=show, volumeMounts=mount)
    for run in (granted, other):
        assert server.wait(run["id"], timeout=WAIT)["status"] == "succeeded"
    for i in range(2):  # the shard saw the value; its logs hold *** instead
        assert (out / f"{granted['id']}-{i}").read_text() == VALUE
        assert logs(server, granted["id"], i) == "url=***\n"
        assert logs(server, granted["id"], i, stream="stderr") == "err ***\n"
    assert (out / f"{other['id']}-0").read_text() == "unset"  # not granted: not given
    assert logs(server, other["id"]) == "url=unset\n"
    for path in (f"/v1/runs/{granted['id']}", f"/v1/runs/{granted['id']}/shards", "/v1/secrets"):
        assert VALUE not in server.http.get(path).text


def test_shards_run_from_a_busybox_image(
    start: Callable[..., Server], busybox_images: BusyboxImages, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)  # the Ray nodes' image cache is in it: shards enter the rootfs
    server = start()
    vol, out = server.volume()
    image = f"oci:{busybox_images.layout}:latest"
    run = server.submit(
        image=image,
        command=[
            "/bin/sh",
            "-c",
            'echo "part $SYLPHX_SHARD_INDEX from $(pwd) says $GREETING" > /shared/part-'
            "$SYLPHX_SHARD_INDEX; touch /escape 2>/dev/null || echo ro; ls /usr 2>&1 | head -1",
        ],
        parallelism=2,
        machine="nano",
        gangScheduling=False,
        volumeMounts=[{"volumeId": vol, "mountPath": "/shared"}],
    )
    done = server.wait(run["id"], timeout=WAIT)
    assert done["status"] == "succeeded", server.shards(run["id"])
    assert sorted(p.read_text() for p in out.iterdir()) == [
        f"part {i} from /work says hello\n" for i in range(2)
    ]  # the image's WorkingDir and Env
    # the image's root, read-only: no host /usr in it
    assert logs(server, run["id"]) == "ro\nls: /usr: No such file or directory\n"
    cmd_only = server.submit(image=image)  # no command: the image's CMD
    assert server.wait(cmd_only["id"], timeout=WAIT)["status"] == "succeeded"
    assert logs(server, cmd_only["id"]) == "hello\n"
    if kind_of(server) == "ray":  # unpacked by the node, in its own cache
        assert list((server.settings.ray_image_cache / "sha256").iterdir())
    missing = server.submit(image=image, command=["python3"])  # not in the image
    assert server.wait(missing["id"], timeout=WAIT)["status"] == "failed"
    assert outcome(server, missing["id"]) == [(0, "failed", [("failed", 127, "LaunchError")])]
    # A tenant attack: another org's shard on the host's root cannot read the unpacked
    # images (the local image store under the home; a Ray node's own image cache).
    cache = server.settings.ray_image_cache if kind_of(server) == "ray" else server.settings.home
    probe = f"ls -A {cache} 2>&1 | head -3; find {cache} -name os-release 2>/dev/null | head -1"
    other = server.client(server.new_org("rival"))
    r = other.post("/v1/runs", json={"command": sh(probe), "workingDir": str(tmp_path)})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    ended = other.get(f"/v1/runs/{run_id}", params={"wait": 60}).json()  # a long-poll
    assert ended["status"] == "succeeded", ended
    seen = other.get(f"/v1/runs/{run_id}/logs", params={"shard": 0}).text
    assert "sha256" not in seen and "os-release" not in seen, seen


def kind_of(server: Server) -> str:
    """The executor a control plane runs."""
    return server.settings.executor
