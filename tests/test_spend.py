"""Knowing and capping the cost (issue #21), with real processes on the test store: the
spend cap of a run, the org's monthly limit, the quote before a submit, failure triage and
unbilled preemptions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from conftest import Server
from sylphx import RunsClient, SpendLimitReached, create_client
from test_admin_cli import sylphx
from test_cli import cli


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


GRACE = 2.0  # the kill grace of these control planes
INTERVAL = 0.5  # their reconcile interval (the default)


def test_a_spend_cap_stops_a_run_within_the_documented_overshoot(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(kill_grace_seconds=GRACE)
    cap = 3.0
    # 2 x standard (1 unit each) that would sleep a minute, and ignore SIGTERM for a while
    script = "trap 'sleep 1; exit 143' TERM; sleep 60 & wait"
    run = server.submit(
        command=["sh", "-c", script],
        parallelism=2,
        machine="standard",
        gangScheduling=False,
        maxComputeSeconds=cap,
    )
    assert run["spec"]["maxComputeSeconds"] == cap
    done = server.wait(run["id"], timeout=60)
    assert done["status"] == "cancelled", done
    assert done["message"].startswith("SpendCapReached: it used"), done["message"]
    assert "maxComputeSeconds of 3" in done["message"]
    overshoot = (INTERVAL + GRACE) * 2 * 1.0  # (interval + grace) x live shards x units
    assert cap <= done["computeSeconds"] <= cap + overshoot, done["computeSeconds"]
    statuses = {s["status"] for s in server.shards(run["id"])}
    assert statuses == {"cancelled"}, statuses
    again = server.http.post(f"/v1/runs/{run['id']}/retry")
    assert again.status_code == 409 and "maxComputeSeconds" in again.text, again.text

    got = cli("run", "--max-compute-seconds", "-1", "--", "true", url=server.url)
    assert got.returncode == 2 and "maxComputeSeconds" in got.stderr, got.stderr


def test_an_org_at_its_monthly_limit_is_refused_with_402_while_its_run_finishes(
    server: Server,
) -> None:
    token = server.new_org("thrifty", plan="pro", monthly_credit_seconds=0.0)
    http = server.client(token)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYLPHX_")}
    admin = base | {
        "SYLPHX_DATABASE_URL": server.settings.database_url,
        "SYLPHX_HOME": str(server.settings.home),
    }
    got = sylphx("admin", "org", "set", "thrifty", "--monthly-limit", "1", env=admin)
    assert got.returncode == 0 and "a limit of 1 billable a month" in got.stdout, got.stderr

    def submit(seconds: float) -> dict[str, Any]:
        spec = {"command": ["sleep", str(seconds)], "machine": "standard"}
        return dict(http.post("/v1/runs", json=spec).json())

    long_run = submit(6)
    short = submit(1.5)
    server.wait_for(lambda: http.get(f"/v1/runs/{short['id']}").json()["status"] == "succeeded")
    refused = http.post("/v1/runs", json={"command": ["true"]})
    assert refused.status_code == 402, refused.text
    body = refused.json()
    assert body["error"] == "spend_limit_reached" and "monthly limit of 1" in body["message"]
    assert body["details"][0]["limit"] == "monthlyLimitSeconds"
    assert body["details"][0]["current"] >= 1.5
    # a spec that could never run is a 422 naming its field, whatever the org's spend
    gpu = http.post("/v1/runs", json={"command": ["true"], "machine": "gpu-small"})
    assert gpu.status_code == 422, gpu.text
    assert gpu.json()["details"][0]["field"] == "machine", gpu.text
    assert http.get(f"/v1/runs/{long_run['id']}").json()["status"] == "running"
    with pytest.raises(SpendLimitReached, match="monthly limit"):
        RunsClient.run(create_client(server.url, token=token), command=["true"])
    org = http.get("/v1/org").json()
    assert org["monthlyLimitSeconds"] == 1 and org["billableSecondsThisMonth"] >= 1.5
    deadline = time.monotonic() + 30
    while http.get(f"/v1/runs/{long_run['id']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    usage = cli("usage", url=server.url, token=token)
    assert "monthly limit     1 billable compute-seconds" in usage.stdout, usage.stdout
    sylphx("admin", "org", "set", "thrifty", "--monthly-limit", "-1", env=admin)
    assert http.post("/v1/runs", json={"command": ["true"]}).status_code == 201
    assert server.http.post("/v1/runs", json={"command": ["true"]}).status_code == 201


def test_an_operator_setting_bills_preempted_windows(make_server: Callable[..., Server]) -> None:
    server = make_server(preemption_grace_seconds=1.0, bill_preemptions=True)
    opp = server.submit(
        command=["sh", "-c", '[ "$SYLPHX_SHARD_ATTEMPT" -gt 1 ] && exit 0; sleep 30'],
        parallelism=2,
        machine="standard",
        gangScheduling=False,
    )
    server.wait_for(lambda: all(s["status"] == "running" for s in server.shards(opp["id"])))
    gang = server.submit(command=["true"], parallelism=2, machine="standard")
    assert server.wait(gang["id"])["status"] == "succeeded"
    done = server.wait(opp["id"])
    attempts = [a for s in server.shards(opp["id"]) for a in s["history"]]
    assert [a["status"] for a in attempts] == ["preempted", "succeeded"] * 2
    walls = sum((_at(a["endedAt"]) - _at(a["startedAt"])).total_seconds() for a in attempts)
    assert done["computeSeconds"] == pytest.approx(walls, abs=0.01)  # every window billed
    assert server.http.get("/v1/usage").json()["unbilledSeconds"] == 0


def test_failure_groups_tell_the_two_ways_a_run_failed(server: Server) -> None:
    script = (
        "i=$SYLPHX_SHARD_INDEX; echo working on $i >&2;"
        ' case $i in 1|3|4) echo "ValueError: bad row $((i * 17)) in /data/part-$i.csv" >&2;'
        " exit 1;; 6) echo 'KeyError: 0xdeadbeef' >&2; exit 2;; esac; exit 0"
    )
    run = server.submit(
        command=["sh", "-c", script], parallelism=8, machine="nano", gangScheduling=False,
        backoffLimitPerIndex=0,
    )  # fmt: skip
    done = server.wait(run["id"])
    assert done["status"] == "partial"
    groups = [
        (g["reason"], g["exitCode"], g["line"], g["count"], g["indices"])
        for g in done["failureGroups"]
    ]
    assert groups == [
        ("Error", 1, "ValueError: bad row <n> in <path>", 3, "1,3-4"),
        ("Error", 2, "KeyError: <hex>", 1, "6"),
    ], done["failureGroups"]
    assert done["failureGroups"][0]["sample"] == "ValueError: bad row 17 in /data/part-1.csv"
    shown = cli("runs", "get", run["id"], url=server.url, token=server.token)
    lines = shown.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("failed 3 (1,3-4)"))
    assert first < next(i for i, line in enumerate(lines) if line.startswith("INDEX"))
    view = RunsClient.get(create_client(server.url, token=server.token), run["id"]).view
    assert [g.indices for g in view.failure_groups] == ["1,3-4", "6"]


def test_a_quote_runs_every_check_and_stores_nothing(make_server: Callable[..., Server]) -> None:
    server = make_server(local_cpus=24.0, local_memory=64 << 30)
    page = {
        "command": ["python", "train.py"],
        "parallelism": 9,
        "machine": "large",
        "timeoutSeconds": 7200,
    }  # fmt: skip  (the product page's example)
    before = server.http.get("/v1/org").json()["shardsInUse"]
    r = server.http.post("/v1/runs", params={"dryRun": "true"}, json=page)
    assert r.status_code == 200, r.text
    quote = r.json()
    assert quote["verdict"] == "startsNow" and "all 9 shards fit now" in quote["reason"]
    assert quote["ceilingComputeSeconds"] == 129_600  # 9 x 7200 s x 2 units
    assert quote["retriesCeilingComputeSeconds"] == 129_600  # a gang: no retries
    opp = {**page, "gangScheduling": False, "backoffLimitPerIndex": 12}  # the page's own
    retried = server.http.post("/v1/runs", params={"dryRun": "true"}, json=opp).json()
    assert retried["ceilingComputeSeconds"] == 129_600
    assert retried["retriesCeilingComputeSeconds"] == 129_600 * 13  # 13 attempts an index
    capped = {**opp, "maxComputeSeconds": 1000}
    capped = server.http.post("/v1/runs", params={"dryRun": "true"}, json=capped).json()
    stop = server.settings.reconcile_interval + server.settings.kill_grace_seconds
    assert capped["retriesCeilingComputeSeconds"] == pytest.approx(1000 + stop * 9 * 2)
    assert quote["expectedComputeSeconds"] is None and quote["basedOnRuns"] == 0
    assert quote["spec"]["gangScheduling"] is True  # the spec as it would be stored
    credit = quote["monthlyCreditSeconds"]
    assert quote["billableCeilingSeconds"] == max(129_600 - quote["creditRemainingSeconds"], 0)
    assert credit >= quote["creditRemainingSeconds"] > 0
    assert server.http.get("/v1/runs").json()["items"] == []  # nothing stored
    assert server.http.get("/v1/org").json()["shardsInUse"] == before  # nothing reserved

    # refused by the plan (free: 1 shard per job): the error a submit would get
    free = server.client(server.new_org("frugal", plan="free"))
    quote = free.post("/v1/runs", params={"dryRun": "true"}, json=page).json()
    assert quote["verdict"] == "refused" and quote["error"]["error"] == "quota_exceeded"
    assert "per-job ceiling of 1" in quote["reason"]
    assert free.post("/v1/runs", json=page).status_code == 429  # as a submit is
    bad = free.post("/v1/runs", params={"dryRun": "true"}, json={**page, "parallelism": 0})
    assert bad.status_code == 422  # a spec that breaks a rule is no quote

    # from the org's history: the median shard of its recent runs of this command and tier
    same = {"command": ["sleep", "0.3"], "parallelism": 3, "machine": "nano"}
    for _ in range(2):
        assert server.wait(server.submit(**same)["id"])["status"] == "succeeded"
    config = create_client(server.url, token=server.token)
    got = RunsClient.quote(config, command=["sleep", "0.3"], parallelism=3, machine="nano")
    assert got.verdict == "startsNow" and got.based_on_runs == 2
    assert got.median_shard_seconds is not None and 0.3 <= got.median_shard_seconds < 5
    assert got.expected_compute_seconds == pytest.approx(
        3 * 0.125 * got.median_shard_seconds, abs=0.01
    )
    shown = cli("run", "--dry-run", "-n", "3", "--machine", "nano", "--", "sleep", "0.3",
                url=server.url, token=server.token)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("starts now: ") and "over 2 recent run(s)" in shown.stdout
    assert len(server.http.get("/v1/runs").json()["items"]) == 2  # still only those two
