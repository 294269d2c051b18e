"""The reconciler, table-driven, with the stub executor and a manual clock (no processes).

Behaviour is also shown with real processes in test_runs.py; here the clock is ours,
so deadlines and the billing meter can be checked to the second.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import migrated_sqlite
from sylphx._core.spec import RunSpec
from sylphx._server.controller import reconciler, survey
from sylphx._server.controller.policy.admission import Resources
from sylphx._server.controller.reconciler import Reconciler
from sylphx._server.executors.stub import ManualClock, StubExecutor
from sylphx._server.runs import service as runs
from sylphx._server.store import (
    AttemptRow,
    OrgRow,
    UsageRow,
    make_engine,
    migrate,
    session_factory,
)
from sylphx._server.tenancy import billing, orgs
from sylphx._settings import Settings

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Harness:
    """A reconciler on a real store, driven pass by pass: the stub executor and the
    reconciler share one manual clock."""

    def __init__(self, tmp: Path, url: str | None = None) -> None:
        self.clock = ManualClock(T0)
        self.executor = StubExecutor(clock=self.clock)
        engine = make_engine(url or migrated_sqlite(tmp / "db.sqlite"))
        migrate(engine)
        self.sessions = session_factory(engine)
        settings = Settings(home=tmp, database_url="unused", kill_grace_seconds=10)
        self.reconciler = Reconciler(self.sessions, self.executor, settings, clock=self.clock)
        with self.sessions.begin() as s:
            orgs.create_org(s, "acme", plan="enterprise", now=T0, org_id="org_acme")

    def submit(self, **spec: Any) -> str:
        with self.sessions.begin() as s:
            org = s.get(OrgRow, "org_acme")
            assert org is not None
            parsed = RunSpec.parse({"command": ["x"], **spec})
            capacity, now = self.executor.capacity(), self.clock()
            run = runs.new_run(s, parsed, org, capacity=capacity, now=now)
            runs.insert_runs(s.connection(), [(run, parsed)])
            return str(run["id"])

    def tick(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        self.reconciler.tick()

    def run(self, run_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            run = runs.load(s, run_id, "org_acme", with_attempts=True)
            view = runs.full_view(s, run, self.clock()).to_wire()
            view["shards"] = [v.to_wire() for v in runs.shard_views(run)]
            return view

    def usage(self, run_id: str) -> list[tuple[float, float]]:
        with self.sessions() as s:
            rows = s.scalars(select(UsageRow).where(UsageRow.run_id == run_id)).all()
            return sorted((r.wall_seconds, r.compute_seconds) for r in rows)


@pytest.fixture(params=["focused", "full"])
def h(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    """Every table runs twice: passes that load only the runs needing a look (the first
    pass loads all), and passes that always load every active run."""
    every = float("inf") if request.param == "focused" else 0.0
    monkeypatch.setattr(reconciler, "FULL_PASS_SECONDS", every)
    yield Harness(tmp_path)


def test_seed_cost_example_nine_large_shards_for_600s(h: Harness) -> None:
    run_id = h.submit(parallelism=9, machine="large")
    h.tick()
    assert len(h.executor.live) == 9
    h.tick(600)
    h.executor.finish_all(0)
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "succeeded"
    assert view["computeSeconds"] == 10_800.0
    assert h.usage(run_id) == [(600.0, 1200.0)] * 9


def test_seed_cost_example_single_standard_shard_for_600s(h: Harness) -> None:
    run_id = h.submit()
    h.tick()
    h.tick(600)
    h.executor.finish(0)
    h.tick()
    assert h.run(run_id)["computeSeconds"] == 600.0


def test_compute_seconds_so_far_include_live_attempts(h: Harness) -> None:
    run_id = h.submit(parallelism=2, machine="small")
    h.tick()
    h.tick(100)
    assert h.run(run_id)["computeSeconds"] == 2 * 100 * 0.5


@pytest.mark.parametrize(
    ("tier", "units"),
    [
        ("nano", 0.125),
        ("micro", 0.25),
        ("small", 0.5),
        ("standard", 1.0),
        ("large", 2.0),
        ("xlarge", 4.0),
        ("2xlarge", 8.0),
        ("mem-2xlarge", 4.0),
    ],
)
def test_machine_units(tier: str, units: float) -> None:
    assert billing.meter(tier, T0, T0 + timedelta(seconds=10)) == (10.0, 10 * units)


def test_timeout_then_kill_after_grace_is_billed_until_the_kill(h: Harness) -> None:
    h.executor.ignore_term = True
    run_id = h.submit(timeoutSeconds=60)
    h.tick()
    h.tick(59)
    assert h.executor.signals == []
    h.tick(1)
    assert [s for _, s in h.executor.signals] == ["term"]
    h.tick(9)
    assert [s for _, s in h.executor.signals] == ["term"]
    h.tick(1)  # grace (10 s) over
    assert [s for _, s in h.executor.signals] == ["term", "kill"]
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "timed_out"
    assert view["shards"][0]["exitCode"] == 137
    assert h.usage(run_id) == [(70.0, 70.0)]


def test_the_timeout_counts_from_the_process_start_not_the_flush(h: Harness) -> None:
    """The local executor runs an attempt from its flush; a busy host's supervisor may
    spawn it later. Its true start, once reported, is what its deadline and its bill
    count from: never cut short of ``timeoutSeconds`` of its own time."""
    run_id = h.submit(timeoutSeconds=60)
    h.tick()
    h.clock.advance(6)
    h.executor.started_late(0, 5)  # spawned 5 s after the flush
    h.tick()
    assert h.run(run_id)["shards"][0]["history"][0]["startedAt"] == "2026-11-02T09:00:05Z"
    h.tick(55)  # 61 s after the flush, 56 of its own
    assert h.executor.signals == []
    h.tick(4)  # 65 s after the flush: its 60 s are up
    assert [s for _, s in h.executor.signals] == ["term"]
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "timed_out"
    assert h.usage(run_id) == [(60.0, 60.0)]


@pytest.mark.parametrize(
    ("late", "clock", "deadline"),
    [
        (-30, 10, 600),  # before its launch: ignored
        (3600, 10, 610),  # ahead of the pass's clock: the clock's time
        (200, 300, 660),  # more than SPAWN_SLACK after its launch: 60 s after it
    ],
)
def test_a_start_record_buys_a_shard_no_more_than_its_bounds(
    h: Harness, late: float, clock: float, deadline: float
) -> None:
    """A start before the launch, after the pass's clock, or later than SPAWN_SLACK after
    the launch (a record an unsandboxed shard rewrote) moves its deadline no further."""
    h.submit(timeoutSeconds=600)
    h.tick()
    h.clock.advance(clock)
    h.executor.started_late(0, late)
    h.tick()
    h.tick(deadline - clock - 1)
    assert h.executor.signals == []
    h.tick(1)
    assert [s for _, s in h.executor.signals] == ["term"]


def test_retries_are_each_billed(h: Harness) -> None:
    run_id = h.submit(
        parallelism=2,
        gangScheduling=False,
        backoffLimitPerIndex=2,
        machine="nano",
        retryBackoff={"initialSeconds": 0},  # at once (the delays: test_lifecycle_policies)
    )
    for _ in range(3):  # index 0 fails three times: 1 try + 2 retries
        h.tick()
        h.tick(8)
        h.executor.finish(0, 1)
    h.executor.finish(1, 0)
    h.tick()
    view = h.run(run_id)
    assert view["status"] == "partial"
    assert [s["attempts"] for s in view["shards"]] == [3, 1]
    # index 0: three 8 s attempts; index 1: one attempt over the same 24 s
    assert h.usage(run_id) == [(8.0, 1.0)] * 3 + [(24.0, 3.0)]


def test_cancel_before_start_bills_nothing_and_mid_flight_bills_the_window(h: Harness) -> None:
    h.executor.resources = Resources.of_host(1, 4 << 30)
    first = h.submit()
    h.tick()
    queued = h.submit()  # no capacity left: stays queued
    h.tick(30)
    with h.sessions.begin() as s:
        runs.cancel(s, queued, "org_acme", h.clock())
        runs.cancel(s, first, "org_acme", h.clock())
    h.tick()
    h.tick()
    assert h.run(queued)["status"] == "cancelled" and h.usage(queued) == []
    assert h.run(first)["status"] == "cancelled"
    assert h.usage(first) == [(30.0, 30.0)]


def test_gang_waits_until_all_fit_then_starts_together(h: Harness) -> None:
    h.executor.resources = Resources.of_host(4, 64 << 30)
    blocker = h.submit(parallelism=2, machine="standard")
    h.tick()
    gang = h.submit(parallelism=3, machine="standard")
    h.tick()
    assert h.run(gang)["status"] == "queued"
    assert "needs 3 vCPU / 6 GiB at once" in h.run(gang)["message"]
    h.executor.finish(0, run_id=blocker)  # 3 vCPU free now: the whole gang fits
    h.tick()
    view = h.run(gang)
    assert view["status"] == "running" and view["aggregate"]["running"] == 3
    assert view["message"] is None


def test_a_pass_with_nothing_new_changes_nothing(h: Harness) -> None:
    run_id = h.submit(parallelism=3, machine="nano")
    h.tick()
    before = h.run(run_id)
    h.tick()
    h.tick()
    assert h.run(run_id) == before


def test_a_focused_pass_loads_only_the_runs_that_changed(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, quiet = h.submit(parallelism=2, machine="nano"), h.submit(parallelism=2, machine="nano")
    h.tick()  # the first pass looks at everything and starts all four shards
    monkeypatch.setattr(reconciler, "FULL_PASS_SECONDS", float("inf"))
    loaded: list[str] = []
    real = survey.load_shards
    monkeypatch.setattr(
        survey,
        "load_shards",
        lambda s, runs: (loaded.extend(r.id for r in runs), real(s, runs))[1],
    )
    h.executor.finish(0, run_id=busy)
    h.tick(1)
    assert h.run(busy)["aggregate"]["succeeded"] == 1
    assert quiet not in loaded and h.run(quiet)["status"] == "running"
    h.executor.finish_all()
    h.tick(1)
    assert h.run(busy)["status"] == h.run(quiet)["status"] == "succeeded"


def test_gang_preempts_opportunistic_shards_which_finish_later(h: Harness) -> None:
    h.executor.resources = Resources.of_host(2, 64 << 30)
    opp = h.submit(parallelism=2, machine="standard", gangScheduling=False, backoffLimitPerIndex=0)
    h.tick()
    h.tick(40)
    gang = h.submit(parallelism=2, machine="standard")
    h.tick()  # the gang holds the head and preempts both opportunistic shards
    assert sorted(s for _, s in h.executor.signals) == ["term", "term"]
    assert "preempting 2 opportunistic shard(s)" in h.run(gang)["message"]
    h.tick(1)  # they stop (SIGTERM honoured); the gang starts
    h.tick()
    assert h.run(gang)["aggregate"]["running"] == 2
    view = h.run(opp)
    assert [s["status"] for s in view["shards"]] == ["pending", "pending"]
    assert [(s["preemptions"], s["attempts"]) for s in view["shards"]] == [(1, 1), (1, 1)]
    assert view["shards"][0]["history"][0]["status"] == "preempted"
    h.tick(10)
    h.executor.finish_all(0)  # the gang ends; the opportunistic shards run again
    h.tick()
    h.tick()
    assert h.run(opp)["aggregate"]["running"] == 2
    h.executor.finish_all(0)
    h.tick()
    done = h.run(opp)
    assert done["status"] == "succeeded"  # with backoffLimitPerIndex 0: budget untouched
    assert [s["attempts"] for s in done["shards"]] == [2, 2]
    assert h.usage(opp).count((40.0, 40.0)) == 2  # the preempted windows are billed


def test_preempted_shard_ignoring_sigterm_is_killed_after_the_preemption_grace(h: Harness) -> None:
    h.executor.resources = Resources.of_host(1, 64 << 30)
    h.executor.ignore_term = True
    h.submit(parallelism=2, machine="standard", gangScheduling=False)
    h.tick()
    h.submit(machine="standard")
    h.tick()
    h.tick(29)
    assert [s for _, s in h.executor.signals] == ["term"]
    h.tick(1)  # the preemption grace (30 s by default)
    assert [s for _, s in h.executor.signals] == ["term", "kill"]


def test_admission_deadline_ends_the_run_and_bills_nothing(h: Harness) -> None:
    h.executor.resources = Resources.of_host(1, 64 << 30)
    h.submit(machine="standard")
    h.tick()
    late = h.submit(parallelism=2, machine="nano", admissionTimeoutSeconds=60)
    h.executor.resources = Resources.of_host(1.1, 64 << 30)  # 0.1 vCPU free: the gang needs 0.2
    h.tick(59)
    assert h.run(late)["status"] == "queued"
    h.tick(1)
    view = h.run(late)
    assert view["status"] == "failed"
    assert view["message"].startswith("AdmissionTimeout: not admitted as a gang within 60s")
    assert {s["reason"] for s in view["shards"]} == {"AdmissionTimeout: not admitted within 60s"}
    assert h.usage(late) == [] and view["computeSeconds"] == 0


def test_admission_deadline_can_fall_back_to_opportunistic(h: Harness) -> None:
    h.executor.resources = Resources.of_host(1.1, 64 << 30)
    h.submit(machine="standard")
    h.tick()
    late = h.submit(
        parallelism=2, machine="nano", admissionTimeoutSeconds=60, admissionFallback="opportunistic"
    )
    h.tick(60)
    view = h.run(late)
    assert view["spec"]["gangScheduling"] is False and view["spec"]["backoffLimitPerIndex"] == 3
    assert view["aggregate"]["running"] == 1 and view["aggregate"]["pending"] == 1
    assert view["message"].startswith("AdmissionTimeout")
    h.executor.finish_all(0)
    h.tick()
    h.tick()
    h.executor.finish_all(0)
    h.tick()
    assert h.run(late)["status"] == "succeeded"


def test_a_restart_that_cannot_find_attempts_records_every_one_lost(h: Harness) -> None:
    """A new control plane whose executor knows none of the live attempts records each of
    them lost, including an old row that never got a handle (recover() gives it one)."""
    run_id = h.submit(parallelism=2, gangScheduling=False, backoffLimitPerIndex=0)
    h.tick()
    with h.sessions.begin() as s:
        first = s.scalars(select(AttemptRow.id).where(AttemptRow.run_id == run_id)).first()
        s.execute(update(AttemptRow).where(AttemptRow.id == first).values(handle=None))
    restarted = Reconciler(
        h.sessions, StubExecutor(clock=h.clock), h.reconciler.settings, clock=h.clock
    )
    restarted.recover()
    with h.sessions() as s:
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.run_id == run_id)).all()
        assert len(attempts) == 2 and all(a.ended_at is not None for a in attempts)
        assert all(
            (a.reason or "").startswith("Lost: the control plane restarted") for a in attempts
        )


def test_a_lost_opportunistic_shard_is_preempted_and_runs_again_on_its_budget(
    h: Harness,
) -> None:
    run_id = h.submit(parallelism=2, gangScheduling=False, backoffLimitPerIndex=0)
    h.tick()
    h.tick(20)
    h.executor.lose(0)  # its node died: not the shard's failure
    h.tick()
    h.tick()
    assert h.run(run_id)["aggregate"]["running"] == 2
    h.tick(10)
    h.executor.finish_all(0)
    h.tick()
    done = h.run(run_id)
    assert done["status"] == "succeeded"  # with backoffLimitPerIndex 0: budget untouched
    assert [(s["preemptions"], s["attempts"]) for s in done["shards"]] == [(1, 2), (0, 1)]
    assert h.usage(run_id) == [(10.0, 10.0), (20.0, 20.0), (30.0, 30.0)]


def test_a_gang_waits_while_the_executor_cannot_reserve_it(h: Harness) -> None:
    h.executor.gangs_ready = False  # as a Ray placement group still pending
    run_id = h.submit(parallelism=3, machine="nano")
    h.tick()
    h.tick(5)
    view = h.run(run_id)
    assert view["status"] == "queued" and h.executor.live == {}
    assert view["message"] == "waiting for the executor to reserve 3 x nano at once"
    assert h.executor.reservations == [(run_id, 3, "nano")] * 2  # asked again each pass
    h.executor.gangs_ready = True
    h.tick()
    assert h.run(run_id)["aggregate"]["running"] == 3 and len(h.executor.live) == 3


# -- executors that place attempts before they start (Ray): running means running ---------


@pytest.fixture
def placed(tmp_path: Path) -> Harness:
    """A harness whose executor starts attempts only when it says so (as Ray places a
    task on a node when it can), not at the flush."""
    harness = Harness(tmp_path)
    harness.executor = StubExecutor(clock=harness.clock, reports_starts=True)
    settings = harness.reconciler.settings
    harness.reconciler = Reconciler(
        harness.sessions, harness.executor, settings, clock=harness.clock
    )
    return harness


def test_a_placed_attempt_is_starting_and_unbilled_until_it_starts(placed: Harness) -> None:
    run_id = placed.submit()
    placed.tick()
    placed.tick(30)  # waiting for a node: starting, nothing metered
    view = placed.run(run_id)
    assert view["shards"][0]["status"] == "starting" and view["computeSeconds"] == 0
    placed.executor.start(0)
    placed.tick()
    view = placed.run(run_id)
    shard = view["shards"][0]
    assert shard["status"] == "running"
    assert shard["history"][0]["startedAt"] == "2026-11-02T09:00:30Z"  # T0 + 30 s
    placed.tick(600)
    placed.executor.finish(0)
    placed.tick()
    assert placed.run(run_id)["status"] == "succeeded"
    assert placed.usage(run_id) == [(600.0, 600.0)]  # the process's window, not the wait


def test_the_timeout_counts_from_the_start_not_the_placement(placed: Harness) -> None:
    placed.submit(timeoutSeconds=60)
    placed.tick()
    placed.tick(100)  # 100 s waiting for a node: no timeout yet
    placed.executor.start(0)
    placed.tick()
    placed.tick(50)
    assert placed.executor.signals == []
    placed.tick(11)
    assert [sig for _, sig in placed.executor.signals] == ["term"]


def test_a_cancelled_run_stops_attempts_still_waiting_for_a_node(placed: Harness) -> None:
    run_id = placed.submit(parallelism=2, gangScheduling=False)
    placed.tick()
    placed.executor.start(0)  # shard 1 still waits to be placed
    placed.tick()
    with placed.sessions.begin() as s:
        runs.cancel(s, run_id, "org_acme", placed.clock())
    placed.tick()
    placed.tick()
    assert sorted(sig for _, sig in placed.executor.signals) == ["term", "term"]
    view = placed.run(run_id)
    assert view["status"] == "cancelled", view
    assert placed.usage(run_id) == [(0.0, 0.0), (0.0, 0.0)]  # neither ran any time
