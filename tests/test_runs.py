"""Core run behaviour on a real control plane with real processes and real SQLite,
parametrized over both executors: local (processes on this host) and ray (a real 3-node
Ray cluster on loopback, shared by the session)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from conftest import Server, pid_alive, pids_of_run, start_server
from sylphx._server.executors.local.processes import signal_shard

PY = sys.executable
GIB = 1 << 30


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def server(request: pytest.FixtureRequest, make_server: Callable[..., Server]) -> Server:
    """The same tests on each executor (local: 2 vCPU / 8 GiB; ray: 3 nodes of 2 vCPU / 4 GiB)."""
    if request.param == "ray":
        return request.getfixturevalue("ray_server")  # type: ignore[no-any-return]
    return make_server()


def vcpus(server: Server) -> int:
    return server.plane.executor.capacity().millicpu // 1000


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_nine_shard_gang_runs_every_index_exactly_once(server: Server) -> None:
    vol, out = server.volume()
    run = server.submit(
        command=sh(
            'echo "$SYLPHX_SHARD_INDEX $SYLPHX_SHARD_COUNT $SYLPHX_SHARD_ATTEMPT '
            '$SYLPHX_RUN_ID" >> "$OUT/$SYLPHX_SHARD_INDEX"'
        ),
        parallelism=9,
        machine="nano",
        env={"OUT": "/out"},
        volumeMounts=[{"volumeId": vol, "mountPath": "/out"}],
    )
    assert run["id"].startswith("wrk_")
    assert run["spec"]["gangScheduling"] is True and run["spec"]["completionMode"] == "Indexed"
    done = server.wait(run["id"])
    assert done["status"] == "succeeded"
    assert done["aggregate"] == {
        "status": "succeeded",
        "succeeded": 9,
        "failed": 0,
        "timedOut": 0,
        "cancelled": 0,
        "running": 0,
        "pending": 0,
        "total": 9,
    }
    assert sorted(p.name for p in out.iterdir()) == [str(i) for i in range(9)]
    for i in range(9):
        assert (out / str(i)).read_text().splitlines() == [f"{i} 9 1 {run['id']}"]
    shards = server.shards(run["id"])
    assert [(s["index"], s["status"], s["exitCode"], s["attempts"]) for s in shards] == [
        (i, "succeeded", 0, 1) for i in range(9)
    ]
    assert done["startedAt"] and done["endedAt"]


def test_odd_shards_failing_is_partial_with_exit_codes(server: Server) -> None:
    run = server.submit(
        command=sh("exit $((SYLPHX_SHARD_INDEX % 2 * 3))"), parallelism=6, machine="nano"
    )
    done = server.wait(run["id"])
    assert done["status"] == "partial"
    assert (done["aggregate"]["succeeded"], done["aggregate"]["failed"]) == (3, 3)
    assert done["message"] == "3/6 succeeded; failed: 1,3,5"
    assert [s["exitCode"] for s in server.shards(run["id"])] == [0, 3, 0, 3, 0, 3]


def test_all_shards_failing_is_failed(server: Server) -> None:
    run = server.submit(command=["false"], parallelism=3, machine="nano")
    assert server.wait(run["id"])["status"] == "failed"


def test_opportunistic_retry_succeeds_on_third_attempt(server: Server, tmp_path: Path) -> None:
    run = server.submit(
        command=sh('[ "$SYLPHX_SHARD_INDEX" = 1 ] || [ "$SYLPHX_SHARD_ATTEMPT" -ge 3 ]'),
        parallelism=2,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=3,
    )
    done = server.wait(run["id"])
    assert done["status"] == "succeeded"
    shard0, shard1 = server.shards(run["id"])
    assert shard0["attempts"] == 3 and shard1["attempts"] == 1
    assert [(a["attempt"], a["status"], a["exitCode"]) for a in shard0["history"]] == [
        (1, "failed", 1),
        (2, "failed", 1),
        (3, "succeeded", 0),
    ]


def test_retry_budget_exhausted_fails_that_index_only(server: Server) -> None:
    run = server.submit(
        command=sh('[ "$SYLPHX_SHARD_INDEX" != 2 ]'),
        parallelism=4,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=1,
    )
    done = server.wait(run["id"])
    assert done["status"] == "partial"
    shards = server.shards(run["id"])
    assert [(s["status"], s["attempts"]) for s in shards] == [
        ("succeeded", 1),
        ("succeeded", 1),
        ("failed", 2),
        ("succeeded", 1),
    ]


def test_opportunistic_default_budget_is_three(server: Server) -> None:
    run = server.submit(command=["false"], parallelism=2, machine="nano", gangScheduling=False)
    assert run["spec"]["backoffLimitPerIndex"] == 3
    server.wait(run["id"])
    assert [s["attempts"] for s in server.shards(run["id"])] == [4, 4]


def test_timeout_kills_the_shard_and_reports_timed_out(server: Server) -> None:
    run = server.submit(
        command=sh('[ "$SYLPHX_SHARD_INDEX" = 0 ] || exec sleep 60'),
        parallelism=2,
        machine="nano",
        timeoutSeconds=3,  # past a sandbox's start even on a loaded host (a TERM before
    )  # the shard started ends the sandbox: the fast shard would time out too)
    done = server.wait(run["id"], timeout=30)
    assert done["status"] == "partial"
    fast, slow = server.shards(run["id"])
    assert fast["status"] == "succeeded"
    assert (slow["status"], slow["reason"], slow["exitCode"]) == (
        "timed_out",
        "DeadlineExceeded",
        143,
    )


def test_shard_ignoring_sigterm_is_killed_after_grace(server: Server) -> None:
    # 3 s: the trap is set before the TERM comes, even on a loaded host
    run = server.submit(command=sh("trap '' TERM; sleep 60"), timeoutSeconds=3)
    done = server.wait(run["id"], timeout=30)
    assert done["status"] == "timed_out"  # every unsuccessful shard timed out
    (shard,) = server.shards(run["id"])
    assert (shard["status"], shard["exitCode"]) == ("timed_out", 137)


def test_cancel_mid_flight_stops_every_process(server: Server) -> None:
    # each shard leaves a child in the background too: the whole tree must go
    run = server.submit(command=sh("sleep 60 & sleep 61 & wait"), parallelism=4, machine="nano")

    def sleepers() -> list[int]:
        return [p for p in pids_of_run(run["id"]) if _comm(p) == "sleep"]

    server.wait_for(lambda: len(sleepers()) == 8)
    live = pids_of_run(run["id"])  # the sleeps, their shells and the sandboxes
    assert all(pid_alive(pid) for pid in live)
    r = server.http.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancelRequested"] is True
    done = server.wait(run["id"], timeout=10)
    assert done["status"] == "cancelled"
    assert done["aggregate"]["cancelled"] == 4
    server.wait_for(lambda: not any(pid_alive(pid) for pid in live), timeout=5)


def test_a_sigterm_before_the_sandbox_started_the_shard_is_not_dropped() -> None:
    """A sandbox (a process group) with no shard process below it yet gets the SIGTERM
    itself: it used to be dropped, and the shard SIGKILLed after the grace (exit 137)."""
    sandbox = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        signal_shard(sandbox.pid, "term", sandboxed=True, group=None)
        assert sandbox.wait(timeout=5) == -signal.SIGTERM
    finally:
        sandbox.kill()
        sandbox.wait()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def test_cancel_queued_run_settles_at_once(server: Server) -> None:
    blocker = server.submit(command=["sleep", "60"], parallelism=vcpus(server), machine="standard")
    server.wait_for(lambda: server.get(blocker["id"])["status"] == "running")
    queued = server.submit(command=["true"], parallelism=2, machine="standard")
    r = server.http.post(f"/v1/runs/{queued['id']}/cancel")
    assert r.json()["status"] == "cancelled"
    assert [s["status"] for s in server.shards(queued["id"])] == ["cancelled", "cancelled"]
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    assert server.wait(blocker["id"])["status"] == "cancelled"


def test_gang_larger_than_free_capacity_stays_queued_until_it_fits(server: Server) -> None:
    # a blocker of (all but one) standard shards leaves 1 vCPU free
    blocker = server.submit(
        command=["sleep", "60"], parallelism=vcpus(server) - 1, machine="standard"
    )
    server.wait_for(lambda: server.get(blocker["id"])["status"] == "running")
    gang = server.submit(command=["true"], parallelism=2, machine="standard")
    server.wait_for(
        lambda: "needs 2 vCPU / 4 GiB at once" in (server.get(gang["id"])["message"] or "")
    )
    waiting = server.get(gang["id"])
    assert waiting["status"] == "queued" and waiting["queuePosition"] == 1
    assert all(s["attempts"] == 0 and s["status"] == "pending" for s in server.shards(gang["id"]))
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    assert server.wait(gang["id"])["status"] == "succeeded"


def test_opportunistic_starts_what_fits_and_completes(server: Server) -> None:
    blocker = server.submit(
        command=["sleep", "60"], parallelism=vcpus(server) - 1, machine="standard"
    )
    server.wait_for(lambda: server.get(blocker["id"])["status"] == "running")
    vol, out = server.volume()
    opp = server.submit(
        command=sh(
            'echo "$SYLPHX_SHARD_INDEX start" >> /out/log; sleep 0.3;'
            ' echo "$SYLPHX_SHARD_INDEX end" >> /out/log'
        ),
        parallelism=3,
        machine="standard",
        gangScheduling=False,
        volumeMounts=[{"volumeId": vol, "mountPath": "/out"}],
    )
    assert server.wait(opp["id"])["status"] == "succeeded"
    lines = (out / "log").read_text().split("\n")[:-1]
    # one vCPU free: the shards ran one at a time
    assert [line.split()[1] for line in lines] == ["start", "end"] * 3
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")


def test_gang_that_can_never_fit_is_refused_at_submit(server: Server) -> None:
    r = server.http.post(
        "/v1/runs", json={"command": ["true"], "parallelism": 9, "machine": "large"}
    )
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "unschedulable"
    assert "needs 18 vCPU / 36 GiB at once" in body["message"]
    cap = server.plane.executor.capacity()
    most = min(cap.millicpu // 2000, cap.memory // (4 * GIB))  # large: 2 vCPU / 4 GiB
    assert f"reduce parallelism to <= {most}" in body["message"]
    assert server.http.get("/v1/runs").json()["items"] == []  # nothing stored


def test_non_indexed_shards_get_count_but_no_index(server: Server) -> None:
    vol, out = server.volume()
    run = server.submit(
        command=sh('echo "${SYLPHX_SHARD_INDEX:-none} $SYLPHX_SHARD_COUNT" > "$(mktemp -p /o)"'),
        parallelism=3,
        machine="nano",
        completionMode="NonIndexed",
        volumeMounts=[{"volumeId": vol, "mountPath": "/o"}],
    )
    assert server.wait(run["id"])["status"] == "succeeded"
    assert sorted(p.read_text() for p in out.iterdir()) == ["none 3\n"] * 3


def test_missing_command_is_a_failed_launch(server: Server) -> None:
    run = server.submit(command=["/no/such/program"])
    assert server.wait(run["id"])["status"] == "failed"
    (shard,) = server.shards(run["id"])
    assert shard["exitCode"] == 127 and shard["reason"].startswith("LaunchError")
    logs = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0, "stream": "stderr"})
    assert "could not start the shard" in logs.text


def test_working_dir_is_honoured(server: Server, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # shards run as an unprivileged user: pytest's dirs are 0700
    (tmp_path / "job.sh").write_text("pwd\n")
    run = server.submit(command=["sh", "job.sh"], workingDir=str(tmp_path))
    server.wait(run["id"])
    logs = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0})
    assert logs.text.strip() == str(tmp_path)


def test_fifty_megabytes_of_stdout_captured_whole(server: Server) -> None:
    size = 50 * 1024 * 1024
    code = (
        f"import sys\nb=bytes(range(256))*4096\n"
        f"for _ in range({size // (256 * 4096)}): sys.stdout.buffer.write(b)"
    )
    run = server.submit(command=[PY, "-c", code])
    assert server.wait(run["id"])["status"] == "succeeded"
    digest, n = hashlib.sha256(), 0
    with server.http.stream("GET", f"/v1/runs/{run['id']}/logs", params={"shard": 0}) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            digest.update(chunk)
            n += len(chunk)
    assert n == size
    assert digest.hexdigest() == hashlib.sha256(bytes(range(256)) * 4096 * 50).hexdigest()


def test_logs_follow_streams_lines_as_they_are_written(server: Server) -> None:
    code = "import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(0.25)"
    run = server.submit(command=[PY, "-c", code])
    got: list[tuple[str, str]] = []
    params: dict[str, str | int] = {"shard": 0, "follow": "true"}
    with server.http.stream("GET", f"/v1/runs/{run['id']}/logs", params=params) as r:
        for line in r.iter_lines():
            got.append((line, server.get(run["id"])["status"]))
    assert [g[0] for g in got] == [f"line {i}" for i in range(4)]
    assert got[0][1] == "running"  # the first line arrived while the shard still ran
    assert server.get(run["id"])["status"] == "succeeded"


def test_logs_of_earlier_attempts_and_unknown_shards(server: Server) -> None:
    run = server.submit(
        command=sh('echo "try $SYLPHX_SHARD_ATTEMPT"; exit 1'),
        parallelism=2,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=1,
    )
    server.wait(run["id"])
    base = f"/v1/runs/{run['id']}/logs"
    assert server.http.get(base, params={"shard": 0}).text == "try 2\n"
    assert server.http.get(base, params={"shard": 0, "attempt": 1}).text == "try 1\n"
    missing = server.http.get(base, params={"shard": 5})  # past the parallelism: a bad value
    assert missing.status_code == 422 and "pick a shard from 0 to 1" in missing.json()["message"]
    assert server.http.get(base, params={"shard": 0, "attempt": 9}).status_code == 422
    assert server.http.get("/v1/runs/wrk_nope/logs", params={"shard": 0}).status_code == 404


def test_unknown_run_ids_are_404_everywhere(server: Server) -> None:
    for method, path in [
        ("GET", "/v1/runs/wrk_nope"),
        ("GET", "/v1/runs/wrk_nope/shards"),
        ("POST", "/v1/runs/wrk_nope/cancel"),
    ]:
        r = server.http.request(method, path)
        assert r.status_code == 404
        assert r.json()["message"].startswith("run 'wrk_nope' not found")


def test_list_filters_and_paginates(server: Server) -> None:
    ids = [server.submit(command=["true"])["id"] for _ in range(3)]
    bad = server.submit(command=["false"])["id"]
    for rid in [*ids, bad]:
        server.wait(rid)
    page1 = server.http.get("/v1/runs", params={"limit": 2}).json()
    assert [r["id"] for r in page1["items"]] == [bad, ids[2]]
    page2 = server.http.get("/v1/runs", params={"limit": 2, "cursor": page1["nextCursor"]}).json()
    assert [r["id"] for r in page2["items"]] == [ids[1], ids[0]]
    assert page2["nextCursor"] is None
    failed = server.http.get("/v1/runs", params={"status": "failed"}).json()["items"]
    assert [r["id"] for r in failed] == [bad]
    assert failed[0]["aggregate"]["failed"] == 1
    r = server.http.get("/v1/runs", params={"status": "bogus"})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "status"


def test_volume_is_mounted_into_every_shard(server: Server) -> None:
    vol = server.http.post("/v1/volumes", json={"name": "cache"}).json()
    assert vol["id"].startswith("vol_")
    run = server.submit(
        command=sh('echo "part $SYLPHX_SHARD_INDEX" > /cache/part-$SYLPHX_SHARD_INDEX'),
        parallelism=3,
        machine="nano",
        volumeMounts=[{"volumeId": vol["id"], "mountPath": "/cache"}],
    )
    assert server.wait(run["id"])["status"] == "succeeded"
    merge = server.submit(
        command=sh("cat /cache/part-*"),
        volumeMounts=[{"volumeId": vol["id"], "mountPath": "/cache"}],
    )
    server.wait(merge["id"])
    text = server.http.get(f"/v1/runs/{merge['id']}/logs", params={"shard": 0}).text
    assert text == "part 0\npart 1\npart 2\n"
    assert not Path("/cache").exists()  # created in the shard's mount namespace, not the host
    assert [v["id"] for v in server.http.get("/v1/volumes").json()] == [vol["id"]]
    assert server.http.delete(f"/v1/volumes/{vol['id']}").status_code == 204
    r = server.http.post(
        "/v1/runs",
        json={"command": ["true"], "volumeMounts": [{"volumeId": vol["id"], "mountPath": "/c"}]},
    )
    assert r.status_code == 404 and "does not exist" in r.json()["message"]


def test_restart_readopts_live_attempts(tmp_path: Path) -> None:
    home = tmp_path / "restart-home"
    first, stop_first = start_server(home)
    run = first.submit(command=sh("sleep 1.5; echo done"))
    first.wait_for(lambda: len(pids_of_run(run["id"])) >= 2)  # the sandbox and the shell
    pids = pids_of_run(run["id"])
    stop_first()  # the shard outlives the server...
    assert all(pid_alive(pid) for pid in pids)
    second, stop_second = start_server(home)
    try:
        done = second.wait(run["id"])  # ...and the restarted one adopts and settles it
        assert done["status"] == "succeeded"
        (shard,) = second.shards(run["id"])
        assert (shard["attempts"], shard["reason"]) == (1, "Completed")
        logs = second.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0})
        assert logs.text == "done\n"
    finally:
        stop_second()


def test_attempt_that_ended_while_down_keeps_its_true_end_time(tmp_path: Path) -> None:
    home = tmp_path / "restart-home"
    first, stop_first = start_server(home)
    vol, out = first.volume()
    stamp = out / "ended"
    run = first.submit(
        command=sh("sleep 0.5; date +%s.%N > /v/ended; exit 3"),
        volumeMounts=[{"volumeId": vol, "mountPath": "/v"}],
    )
    first.wait_for(lambda: first.get(run["id"])["status"] == "running")
    stop_first()
    first.wait_for(lambda: stamp.exists() and stamp.read_text().strip() != "")
    # still down well past the shard's end: its end time must be the shard's, not the restart's
    time.sleep(max(0.0, float(stamp.read_text()) + 1.2 - time.time()))
    second, stop_second = start_server(home)
    try:
        assert second.wait(run["id"])["status"] == "failed"
        (shard,) = second.shards(run["id"])
        assert shard["exitCode"] == 3
        ended = datetime.fromisoformat(shard["history"][0]["endedAt"]).timestamp()
        assert 0 <= ended - float(stamp.read_text()) < 1.0
    finally:
        stop_second()


def test_idempotent_ticks(server: Server) -> None:
    run = server.submit(command=["true"], parallelism=3, machine="nano")
    server.wait(run["id"])
    before = server.shards(run["id"])
    for _ in range(3):
        server.plane.reconciler.tick()
    assert server.shards(run["id"]) == before
