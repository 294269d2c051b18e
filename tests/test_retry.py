"""Retrying the unsuccessful indices of an ended run, in the same run (issue #20 item 1):
real shards on the local executor writing a marker file per execution to a volume, so
what ran again (and what did not) is read off the host."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import Server
from sylphx import AsyncRunsClient, RunsClient, RunState, create_client
from test_cli import cli

# Each execution leaves ran-<index>-<attempt> (holding SYLPHX_SHARD_COUNT); an index with
# a broken-<index> file fails with exit 3.
MARK = (
    "i=$SYLPHX_SHARD_INDEX; echo $SYLPHX_SHARD_COUNT > /v/ran-$i-$SYLPHX_SHARD_ATTEMPT;"
    " [ -e /v/broken-$i ] && exit 3; exit 0"
)


def _marks(vol: Path) -> set[tuple[int, int]]:
    return {(int(p.name.split("-")[1]), int(p.name.split("-")[2])) for p in vol.glob("ran-*-*")}


def _failing_run(server: Server, n: int, broken: set[int], **spec: Any) -> tuple[str, Path]:
    vol_id, vol = server.volume()
    for i in broken:
        (vol / f"broken-{i}").touch()
    run = server.submit(
        command=["sh", "-c", MARK],
        parallelism=n,
        machine="nano",
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/v"}],
        **({"gangScheduling": False, "backoffLimitPerIndex": 0} | spec),
    )
    return run["id"], vol


def test_runs_retry_failed_reruns_only_the_failed_indices_in_the_same_run(
    server: Server,
) -> None:
    run_id, vol = _failing_run(server, 9, broken={2, 5})
    first = server.wait(run_id)
    assert first["status"] == "partial" and first["aggregate"]["failed"] == 2, first
    assert "failed: 2,5" in first["message"]
    for p in vol.glob("broken-*"):
        p.unlink()  # fixed: the next attempts succeed

    got = cli("runs", "retry", run_id, "--failed", "--follow", url=server.url, token=server.token)
    assert got.returncode == 0, got.stderr + got.stdout
    assert "succeeded" in got.stdout and "(retried 1x)" in got.stdout
    done = server.get(run_id)
    assert done["status"] == "succeeded" and done["reopened"] == 1, done
    assert done["aggregate"]["succeeded"] == 9 and done["message"] is None
    # only 2 and 5 ran again, as attempt 2, still seeing the run's shard count
    assert _marks(vol) == {(i, 1) for i in range(9)} | {(2, 2), (5, 2)}
    assert (vol / "ran-5-2").read_text() == "9\n"
    for shard in server.shards(run_id):
        history = [(a["attempt"], a["status"], a["exitCode"]) for a in shard["history"]]
        if shard["index"] in (2, 5):
            assert history == [(1, "failed", 3), (2, "succeeded", 0)], shard
        else:
            assert history == [(1, "succeeded", 0)], shard
        assert shard["status"] == "succeeded" and shard["exitCode"] == 0
    assert done["computeSeconds"] > first["computeSeconds"]  # the new attempts billed too
    logs = server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": 2, "attempt": 1})
    assert logs.status_code == 200  # the first attempt's logs are kept


def test_a_retry_that_cannot_be_done_names_the_index_and_changes_nothing(server: Server) -> None:
    run_id, vol = _failing_run(server, 4, broken={1})
    assert server.wait(run_id)["status"] == "partial"

    def retry(body: Any) -> Any:
        return server.http.post(f"/v1/runs/{run_id}/retry", json=body)

    r = retry({"indices": "0-1"})
    assert r.status_code == 409 and "index 0 succeeded" in r.json()["message"], r.text
    assert r.json()["details"][0]["field"] == "indices"
    r = retry({"indices": "1,7"})
    assert r.status_code == 422 and "index 7 does not exist" in r.json()["message"], r.text
    r = retry({"indices": "1-"})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "indices", r.text
    r = retry({"indices": "0-99999999999"})
    assert r.status_code == 422 and "at most 256" in r.json()["message"], r.text
    r = retry({"index": "1"})
    assert r.status_code == 422 and "index" in r.text
    other = server.client(server.new_org("other"))
    assert other.post(f"/v1/runs/{run_id}/retry", json={}).status_code == 404
    run = server.get(run_id)
    assert run["status"] == "partial" and run["reopened"] == 0  # nothing stored
    assert _marks(vol) == {(i, 1) for i in range(4)}

    busy = server.submit(command=["sleep", "30"], parallelism=2, machine="nano")
    r = server.http.post(f"/v1/runs/{busy['id']}/retry")  # no body at all: the default
    assert r.status_code == 409 and "only an ended run can be retried" in r.text, r.text
    server.http.post(f"/v1/runs/{busy['id']}/cancel")

    ok = server.submit(command=["true"], parallelism=2, machine="nano")
    assert server.wait(ok["id"])["status"] == "succeeded"
    r = server.http.post(f"/v1/runs/{ok['id']}/retry", json={})
    assert r.status_code == 409 and "no failed, timed_out or cancelled index" in r.text


def test_a_cancelled_run_retries_the_chosen_indices_and_ends_on_theirs(server: Server) -> None:
    vol_id, vol = server.volume()
    script = (
        "echo x > /v/ran-$SYLPHX_SHARD_INDEX-$SYLPHX_SHARD_ATTEMPT;"
        ' [ "$SYLPHX_SHARD_ATTEMPT" -gt 1 ] || sleep 60'
    )
    run = server.submit(
        command=["sh", "-c", script],
        parallelism=4,
        machine="nano",
        gangScheduling=False,
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/v"}],
    )
    server.wait_for(lambda: len(list(vol.glob("ran-*"))) == 4, timeout=90)
    server.http.post(f"/v1/runs/{run['id']}/cancel")
    assert server.wait(run["id"])["status"] == "cancelled"
    server.wait_for(  # its processes stopped: every attempt has ended
        lambda: (
            server.http.post(f"/v1/runs/{run['id']}/retry", json={"indices": "1,3"}).status_code
            == 200
        ),
        timeout=30,
    )
    done = server.wait(run["id"])
    # 1 and 3 succeeded, 0 and 2 stay cancelled; the cancel no longer counts
    assert done["status"] == "partial" and not done["cancelRequested"], done
    assert [s["status"] for s in server.shards(run["id"])] == [
        "cancelled",
        "succeeded",
        "cancelled",
        "succeeded",
    ]
    assert _marks(vol) == {(i, 1) for i in range(4)} | {(1, 2), (3, 2)}


def test_a_retry_sent_twice_with_one_key_reopens_the_run_once(server: Server) -> None:
    run_id, vol = _failing_run(server, 3, broken={0})
    assert server.wait(run_id)["status"] == "partial"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = server.http.post(f"/v1/runs/{run_id}/retry", headers=key)
    again = server.http.post(f"/v1/runs/{run_id}/retry", headers=key)
    assert first.status_code == again.status_code == 200, again.text
    assert server.wait(run_id)["reopened"] == 1
    assert server.http.post(f"/v1/runs/{run_id}/retry", headers=key).status_code == 200
    assert _marks(vol) == {(0, 1), (1, 1), (2, 1), (0, 2)}  # index 0 ran again once


def test_a_retry_over_the_orgs_concurrent_shards_is_a_429(server: Server) -> None:
    http = server.client(server.new_org("small", concurrent_shards=3))
    vol = http.post("/v1/volumes", json={"name": "v"}).json()["id"]
    run = http.post(
        "/v1/runs",
        json={
            "command": ["false"],
            "parallelism": 3,
            "machine": "nano",
            "gangScheduling": False,
            "backoffLimitPerIndex": 0,
            "volumeMounts": [{"volumeId": vol, "mountPath": "/v"}],
        },
    ).json()
    deadline = time.monotonic() + 60
    while http.get(f"/v1/runs/{run['id']}").json()["status"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    busy = http.post(
        "/v1/runs", json={"command": ["sleep", "60"], "parallelism": 2, "machine": "nano"}
    ).json()
    r = http.post(f"/v1/runs/{run['id']}/retry")
    assert r.status_code == 429 and r.json()["error"] == "quota_exceeded", r.text
    assert http.get(f"/v1/runs/{run['id']}").json()["reopened"] == 0
    assert http.post(f"/v1/runs/{run['id']}/retry", json={"indices": "0"}).status_code == 200
    http.post(f"/v1/runs/{busy['id']}/cancel")


def test_a_gang_retry_is_a_gang_of_the_chosen_indices(server: Server) -> None:
    run_id, vol = _failing_run(
        server, 3, broken={0, 2}, gangScheduling=True, backoffLimitPerIndex=None
    )
    assert server.wait(run_id)["status"] == "partial"
    for p in vol.glob("broken-*"):
        p.unlink()
    r = server.http.post(f"/v1/runs/{run_id}/retry")
    assert r.status_code == 200 and r.json()["aggregate"]["pending"] == 2, r.text
    assert r.json()["status"] == "queued"
    assert server.wait(run_id)["status"] == "succeeded"
    got = {s["index"]: s for s in server.shards(run_id)}
    assert got[0]["history"][1]["startedAt"][:19] == got[2]["history"][1]["startedAt"][:19]
    assert _marks(vol) == {(0, 1), (1, 1), (2, 1), (0, 2), (2, 2)}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_the_sdk_retries_the_indices_it_names(server: Server, flavour: str) -> None:
    config = create_client(server.url, token=server.token)
    run_id, vol = _failing_run(server, 4, broken={1, 3})
    assert server.wait(run_id)["status"] == "partial"
    (vol / "broken-1").unlink()
    if flavour == "sync":
        run = RunsClient.get(config, run_id)
        assert run.retry([1]).reopened == 1  # a list, sent compressed
        assert run.wait(timeout=60).status is RunState.PARTIAL
    else:

        async def go() -> RunState:
            run = await AsyncRunsClient.get(config, run_id)
            assert (await run.retry("1")).status is RunState.QUEUED
            return (await run.wait(timeout=60)).status

        assert asyncio.run(go()) is RunState.PARTIAL
    assert _marks(vol) == {(i, 1) for i in range(4)} | {(1, 2)}
