"""The billing meter end to end, monthly credits, and the usage report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conftest import Server
from sylphx._server.store import (
    AttemptRow,
    RunRow,
    ShardRow,
    make_engine,
    migrate,
    session_factory,
)
from sylphx._server.tenancy import billing, orgs


def test_real_run_meters_its_attempt_windows(server: Server) -> None:
    run = server.submit(command=["sleep", "0.5"], parallelism=2, machine="small")
    done = server.wait(run["id"])
    windows = [
        (
            datetime.fromisoformat(a["endedAt"]) - datetime.fromisoformat(a["startedAt"])
        ).total_seconds()
        for shard in server.shards(run["id"])
        for a in shard["history"]
    ]
    assert all(w >= 0.5 for w in windows)
    assert done["computeSeconds"] == pytest.approx(sum(windows) * 0.5, abs=0.01)
    report = server.http.get("/v1/usage").json()
    by_run = [
        {"runId": run["id"], "computeSeconds": done["computeSeconds"], "unbilledSeconds": 0.0}
    ]
    assert report["byRun"] == by_run
    assert report["byMachine"][0]["machine"] == "small"
    assert report["creditsApplied"] == report["computeSeconds"]  # well within the credit
    assert report["billableSeconds"] == 0


def test_never_started_and_launch_failures_bill_nothing(server: Server) -> None:
    blocker = server.submit(command=["sleep", "30"], parallelism=2, machine="standard")
    server.wait_for(lambda: server.get(blocker["id"])["status"] == "running")
    queued = server.submit(command=["true"], machine="standard")
    server.http.post(f"/v1/runs/{queued['id']}/cancel")
    assert server.wait(queued["id"])["computeSeconds"] == 0
    broken = server.submit(command=["/no/such/binary"], machine="nano")
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    assert server.wait(broken["id"])["computeSeconds"] == 0
    cancelled = server.wait(blocker["id"])
    assert 0 < cancelled["computeSeconds"] < 2 * 30  # only the partial window


def _org_with_usage(
    tmp_path: Path, credit: float, rows: list[tuple[datetime, float]]
) -> sessionmaker[Session]:
    """An org whose attempts ended at the given times, each metering the given seconds."""
    engine = make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")
    migrate(engine)
    sessions = session_factory(engine)
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    with sessions.begin() as s:
        org = orgs.create_org(s, "acme", plan="pro", now=t0, monthly_credit_seconds=credit)
        for i, (ended, compute) in enumerate(rows):
            started = ended - timedelta(seconds=compute)
            run = RunRow(
                id=f"wrk_{i}",
                org_id=org.id,
                state="succeeded",
                spec={},
                parallelism=1,
                machine="standard",
                gang=True,
                created_at=started,
            )
            shard = ShardRow(index=0, state="succeeded", attempts=1, failures=0)
            attempt = AttemptRow(
                run_id=run.id, number=1, state="succeeded", started_at=started, ended_at=ended
            )
            shard.history = [attempt]
            run.shards = [shard]
            s.add(run)
            s.flush()
            billing.record(s, [billing.usage(attempt, run)])
    return sessions


def test_credits_apply_first_within_each_month(tmp_path: Path) -> None:
    oct5, oct20, nov3 = (datetime(2026, m, d, tzinfo=UTC) for m, d in ((10, 5), (10, 20), (11, 3)))
    sessions = _org_with_usage(tmp_path, 1000, [(oct5, 600), (oct20, 600), (nov3, 300)])
    with sessions.begin() as s:
        org = orgs.find_org(s, "acme")
        whole = billing.report(
            s, org, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
        )
        assert (whole.compute_seconds, whole.credits_applied, whole.billable_seconds) == (
            1500,
            1300,
            200,
        )  # Oct: 1000 of 1200 free; Nov: all 300 free
        late_oct = billing.report(
            s, org, datetime(2026, 10, 10, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
        )
        # 600 of October's credit went before the window: 400 left for the 600 inside it
        assert (late_oct.compute_seconds, late_oct.credits_applied, late_oct.billable_seconds) == (
            600,
            400,
            200,
        )


def test_usage_cli_and_bad_window(server: Server) -> None:
    run = server.submit(command=["true"], machine="nano")
    server.wait(run["id"])
    env = {**os.environ, "SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token}
    out = subprocess.run(
        [sys.executable, "-m", "sylphx", "usage", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout)["byRun"][0]["runId"] == run["id"]
    text = subprocess.run(
        [sys.executable, "-m", "sylphx", "usage"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "billable seconds" in text and "nano" in text
    bad = server.http.get(
        "/v1/usage", params={"from": "2026-12-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}
    )
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "from"
