"""The merge step (issue #20 item 2): real shards on the local executor, then one merge
process fed SYLPHX_MANIFEST, with the run's volume; what ran, and what the merge was told,
is read off the host."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from conftest import Server
from sylphx import AsyncRunsClient, MergeSpec, RunsClient, RunState, create_client
from sylphx._server.store import UsageRow
from test_cli import cli

# Each shard execution leaves ran-<index>-<attempt>; an index with broken-<index> exits 3.
MARK = (
    "i=$SYLPHX_SHARD_INDEX; touch /v/ran-$i-$SYLPHX_SHARD_ATTEMPT;"
    " [ -e /v/broken-$i ] && exit 3; echo part-$i > /v/part-$i; exit 0"
)
# The merge keeps a copy of its manifest and what it saw; fails with merge-broken present.
MERGE = (
    "a=$SYLPHX_SHARD_ATTEMPT; cp $SYLPHX_MANIFEST /v/manifest-$a.json;"
    ' echo "${SYLPHX_SHARD_INDEX-unset} $SYLPHX_SHARD_COUNT $SYLPHX_RUN_ID $EXTRA $SHARED"'
    " > /v/merge-env-$a; (echo x >> $SYLPHX_MANIFEST) 2>/dev/null && echo writable > /v/rw-$a;"
    " [ -e /v/merge-broken ] && { echo merge broke >&2; exit 4; };"
    " cat /v/part-* > /v/merged; echo merged $(cat /v/part-* | wc -l)"
)


def _submit(
    server: Server, n: int, broken: set[int], merge: dict[str, Any] | None = None, **spec: Any
) -> tuple[str, Path]:
    vol_id, vol = server.volume()
    for i in broken:
        (vol / f"broken-{i}").touch()
    run = server.submit(
        command=["sh", "-c", MARK],
        parallelism=n,
        machine="nano",
        env={"SHARED": "run-env"},
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/v"}],
        merge={"command": ["sh", "-c", MERGE], "env": {"EXTRA": "merge-env"}} | (merge or {}),
        **({"gangScheduling": False, "backoffLimitPerIndex": 0} | spec),
    )
    assert run["merge"]["status"] == "pending", run
    return run["id"], vol


def _manifest(vol: Path, attempt: int) -> dict[str, Any]:
    return dict(json.loads((vol / f"manifest-{attempt}.json").read_text()))


def test_the_merge_runs_once_after_the_shards_and_again_after_a_retry(server: Server) -> None:
    run_id, vol = _submit(server, 9, {2, 5}, merge={"when": {"minSucceeded": 7}})
    first = server.wait(run_id)
    assert first["status"] == "partial", first  # the merge succeeded; two indices did not
    assert first["merge"]["status"] == "succeeded" and first["merge"]["attempts"] == 1, first
    assert first["aggregate"]["total"] == 9 and first["aggregate"]["failed"] == 2
    manifest = _manifest(vol, 1)
    assert manifest["runId"] == run_id and manifest["shardCount"] == 9
    assert manifest["succeededIndices"] == [0, 1, 3, 4, 6, 7, 8]
    by_index = {shard["index"]: shard for shard in manifest["shards"]}
    assert sorted(by_index) == list(range(9))
    assert by_index[2]["status"] == "failed" and by_index[2]["exitCode"] == 3
    assert by_index[0]["status"] == "succeeded" and by_index[0]["attempts"] == 1
    assert by_index[0]["durationSeconds"] is not None and by_index[0]["stdoutBytes"] == 0
    # no index, the run's shard count and id, the merge's env over the run's
    assert (vol / "merge-env-1").read_text().split() == [
        "unset",
        "9",
        run_id,
        "merge-env",
        "run-env",
    ]
    assert not (vol / "rw-1").exists()  # the manifest is read-only
    log = server.http.get(f"/v1/runs/{run_id}/logs", params={"merge": "true"})
    assert log.status_code == 200 and log.text == "merged 7\n", log.text

    for p in vol.glob("broken-*"):
        p.unlink()
    got = cli("runs", "retry", run_id, "--failed", "--follow", url=server.url, token=server.token)
    assert got.returncode == 0, got.stderr + got.stdout
    done = server.get(run_id)
    assert done["status"] == "succeeded" and done["reopened"] == 1, done
    assert done["merge"]["status"] == "succeeded" and done["merge"]["attempts"] == 2, done
    ran = {p.name for p in vol.glob("ran-*")}
    assert ran == {f"ran-{i}-1" for i in range(9)} | {"ran-2-2", "ran-5-2"}  # only 2 and 5
    assert _manifest(vol, 2)["succeededIndices"] == list(range(9))  # all 9, the second time
    assert (vol / "merged").read_text().count("part-") == 9
    second = cli("runs", "logs", run_id, "--merge", url=server.url, token=server.token)
    assert second.returncode == 0 and second.stdout == "merged 9\n", second.stdout
    first_log = server.http.get(f"/v1/runs/{run_id}/logs", params={"merge": "true", "attempt": 1})
    assert first_log.text == "merged 7\n"  # each merge's logs are kept


def test_each_when_mode_decides_whether_the_merge_runs(server: Server) -> None:
    cases = {  # (shards, broken, when) -> merge status, run status
        "all-ok": (3, set(), "allSucceeded", "succeeded", "succeeded"),
        "all-partial": (3, {1}, "allSucceeded", "skipped", "partial"),
        "always-none": (2, {0, 1}, "always", "succeeded", "failed"),
        "min-met": (3, {1}, {"minSucceeded": 2}, "succeeded", "partial"),
        "min-unmet": (3, {0, 1}, {"minSucceeded": 2}, "skipped", "partial"),
    }
    runs = {
        name: _submit(server, n, broken, merge={"when": when})
        for name, (n, broken, when, _, _) in cases.items()
    }
    for name, (run_id, vol) in runs.items():
        *_, merge_status, run_status = cases[name]
        run = server.wait(run_id)
        assert (run["merge"]["status"], run["status"]) == (merge_status, run_status), (name, run)
        assert (vol / "manifest-1.json").exists() == (merge_status == "succeeded"), name
        if merge_status == "skipped":
            assert run["merge"]["attempts"] == 0 and "merge skipped: when" in run["message"]
            assert "did not hold" in run["merge"]["reason"], run["merge"]
    assert _manifest(runs["always-none"][1], 1)["succeededIndices"] == []


def test_a_failed_merge_fails_the_run_is_retried_by_its_budget_and_by_a_retry(
    server: Server,
) -> None:
    run_id, vol = _submit(server, 3, set(), merge={"backoffLimit": 1})
    (vol / "merge-broken").touch()
    run = server.wait(run_id)
    assert run["status"] == "failed" and run["aggregate"]["succeeded"] == 3, run
    assert run["merge"]["status"] == "failed" and run["merge"]["exitCode"] == 4, run
    assert run["merge"]["attempts"] == 2  # merge.backoffLimit: 1
    assert "merge failed: exit 4" in run["message"] and "--merge" in run["message"], run
    err = server.http.get(f"/v1/runs/{run_id}/logs", params={"merge": "true", "stream": "stderr"})
    assert "merge broke" in err.text

    (vol / "merge-broken").unlink()
    r = server.http.post(f"/v1/runs/{run_id}/retry")  # nothing failed but the merge
    assert r.status_code == 200, r.text
    done = server.wait(run_id)
    assert done["status"] == "succeeded" and done["merge"]["attempts"] == 3, done
    assert {p.name for p in vol.glob("ran-*")} == {"ran-0-1", "ran-1-1", "ran-2-1"}


def test_the_merge_is_billed_at_its_own_tier_and_its_timeout_holds(server: Server) -> None:
    run_id, _ = _submit(
        server,
        2,
        set(),
        merge={"command": ["sleep", "30"], "machine": "small", "timeoutSeconds": 1},
    )
    run = server.wait(run_id)
    assert run["status"] == "failed" and run["merge"]["status"] == "timed_out", run
    assert "merge timed out" in run["message"]
    assert run["spec"]["merge"]["machine"] == "small"
    with server.plane.reads() as s:
        rows = s.execute(select(UsageRow.machine).where(UsageRow.run_id == run_id)).all()
    assert sorted(m for (m,) in rows) == ["nano", "nano", "small"]


def test_cancelling_a_run_stops_its_merge(server: Server) -> None:
    run_id, _ = _submit(server, 2, set(), merge={"command": ["sleep", "60"]})
    server.wait_for(lambda: server.get(run_id)["merge"]["status"] == "running")
    r = server.http.post(f"/v1/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    run = server.wait(run_id)
    assert run["status"] == "cancelled" and run["merge"]["status"] == "cancelled", run


def test_a_bad_merge_is_refused_naming_the_field_and_nothing_is_stored(server: Server) -> None:
    bad = {
        "merge.command": {"command": []},
        "merge.when": {"command": ["true"], "when": "sometimes"},
        "merge.when.minSucceeded": {"command": ["true"], "when": {"minSucceeded": 5}},
        "merge.env": {"command": ["true"], "env": {"SYLPHX_X": "1"}},
        "merge.backoffLimit": {"command": ["true"], "backoffLimit": 99},
        "merge.machine": {"command": ["true"], "machine": "gpu-small"},
    }
    for field, merge in bad.items():
        r = server.http.post(
            "/v1/runs", json={"command": ["true"], "parallelism": 4, "merge": merge}
        )
        assert r.status_code in (422, 409), (field, r.text)
        assert r.json()["details"][0]["field"] == field, (field, r.text)
    assert server.http.get("/v1/runs").json()["items"] == []
    r = server.http.get("/v1/runs/wrk_0000000000000000/logs", params={"shard": 0, "merge": "true"})
    assert r.status_code == 422 and "merge=true" in r.text


def test_the_cli_and_both_sdks_give_a_merge_and_read_its_log(server: Server) -> None:
    vol_id, _ = server.volume()
    got = cli(
        "run", "-n", "3", "--machine", "nano", "--opportunistic", "--volume", f"{vol_id}:/v",
        "--merge-command", "sh -c 'echo merged $(ls /v | wc -l) from $SYLPHX_SHARD_COUNT'",
        "--merge-when", "2", "--merge-machine", "micro", "--follow",
        "--", "sh", "-c", "touch /v/p-$SYLPHX_SHARD_INDEX",
        url=server.url, token=server.token,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr + got.stdout
    assert "merge: succeeded (attempt 1, exit 0" in got.stdout, got.stdout
    run_id = got.stdout.split()[0]
    shown = cli("runs", "get", run_id, url=server.url, token=server.token)
    assert "merge: succeeded" in shown.stdout and "sh -c" in shown.stdout, shown.stdout
    run = server.get(run_id)
    assert run["spec"]["merge"]["when"] == {"minSucceeded": 2}
    assert run["spec"]["merge"]["machine"] == "micro"
    log = cli("runs", "logs", run_id, "--merge", url=server.url, token=server.token)
    assert log.stdout == "merged 3 from 3\n", log.stdout
    both = cli("runs", "logs", run_id, "--merge", "--shard", "0", url=server.url)
    assert both.returncode == 2 and "--merge" in both.stderr
    lonely = cli("run", "--merge-when", "always", "--", "true", url=server.url)
    assert lonely.returncode == 2 and "--merge-command" in lonely.stderr

    config = create_client(server.url, token=server.token)
    merge = {"command": ["sh", "-c", "echo sdk-merged"], "when": "always"}
    handle = RunsClient.run_distributed(
        config, command=["true"], parallelism=2, machine="nano", merge=merge
    )
    assert handle.wait(timeout=60).status is RunState.SUCCEEDED
    assert handle.view.merge is not None and handle.view.merge.status.value == "succeeded"
    assert handle.logs("merge").stdout == "sdk-merged\n"

    async def via_async() -> str:
        run = await AsyncRunsClient.run_distributed(
            config, command=["true"], parallelism=2, machine="nano", merge=MergeSpec(**merge)
        )
        await run.wait(timeout=60)
        return (await run.logs("merge")).stdout

    assert asyncio.run(via_async()) == "sdk-merged\n"


ATTACK = (
    "m=$SYLPHX_MANIFEST; d=$(dirname $m);"
    " (echo pwned > $m) 2>/dev/null && echo wrote-manifest;"
    " (mount -o remount,rw $m) 2>/dev/null && echo remounted;"
    " (umount $m) 2>/dev/null && echo unmounted;"
    " (rm -f $m) 2>/dev/null; [ -e $m ] || echo removed;"
    " (touch $d/planted) 2>/dev/null && echo planted;"
    " (ln -s /etc/passwd $d/link) 2>/dev/null && echo linked;"
    " ls / | grep -q state && echo sees-state; cat $m > /dev/null && echo read-ok"
)


def test_a_merge_step_cannot_touch_its_manifest_or_the_host(server: Server) -> None:
    """An attack through the API from inside a merge step: write, remount, unmount, remove
    the manifest, plant files beside it; asserted on the host afterwards."""
    run = server.submit(
        command=["true"], parallelism=2, machine="nano", merge={"command": ["sh", "-c", ATTACK]}
    )
    done = server.wait(run["id"])
    assert done["status"] == "succeeded", done
    log = server.http.get(f"/v1/runs/{run['id']}/logs", params={"merge": "true"}).text
    assert log == "read-ok\n", log  # every attempt on the manifest failed; it could read it
    host = server.settings.home / "work" / run["id"]
    files = sorted(p.name for p in host.iterdir())
    assert files == ["manifest.attempt-1.json"], files  # nothing planted on the host
    manifest = json.loads((host / "manifest.attempt-1.json").read_text())
    assert manifest["runId"] == run["id"] and manifest["succeededIndices"] == [0, 1]
    assert oct((host / "manifest.attempt-1.json").stat().st_mode & 0o777) == "0o444"
