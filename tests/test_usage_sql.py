"""The usage report aggregated in the store, against a plain Python reference, on the store
the session tests (SYLPHX_TEST_STORE), and the bounded report window."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from conftest import Server, database_url_for, migrated_store_for
from sylphx._core.errors import ValidationError
from sylphx._core.machines import MACHINES
from sylphx._server.store import (
    AttemptRow,
    OrgRow,
    RunRow,
    ShardRow,
    UsageRow,
    make_engine,
    migrate,
    session_factory,
)
from sylphx._server.store.db import MIGRATIONS
from sylphx._server.store.schema import UsageDayRow
from sylphx._server.tenancy import billing, orgs


@dataclass(frozen=True)
class Use:
    org_id: str
    run_id: str
    machine: str
    ended: datetime
    wall: float

    @property
    def compute(self) -> float:
        return self.wall * MACHINES[self.machine].units


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def reference(uses: list[Use], org_id: str, credit: float, start: datetime, end: datetime) -> Any:
    """The report's numbers, from the rules alone: the credit of each calendar month goes
    first, in time order, also to that month's usage before ``start``."""
    mine = sorted((u for u in uses if u.org_id == org_id), key=lambda u: u.ended)
    left: dict[tuple[int, int], float] = defaultdict(lambda: credit)
    total = applied = 0.0
    by_run: dict[str, float] = defaultdict(float)
    by_machine: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for u in mine:
        month = (u.ended.year, u.ended.month)
        free = min(left[month], u.compute)
        left[month] -= free
        if start <= u.ended < end:
            total += u.compute
            applied += free
            by_run[u.run_id] += u.compute
            by_machine[u.machine][0] += u.wall
            by_machine[u.machine][1] += u.compute
    return (
        round(total, 3),
        round(applied, 3),
        round(total - applied, 3),
        [(r, round(c, 3)) for r, c in sorted(by_run.items())],
        [(m, round(w, 3), round(c, 3)) for m, (w, c) in sorted(by_machine.items())],
    )


def _store(tmp_path: Path, uses: list[Use], credits: dict[str, float]) -> sessionmaker[Session]:
    """A store of the session's kind holding ``uses``: a run per run id, an attempt each."""
    engine = make_engine(migrated_store_for(tmp_path))
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        for org_id, credit in credits.items():
            orgs.create_org(
                s, org_id.replace("_", "-"), plan="pro", now=_t("2024-01-01"), org_id=org_id,
                monthly_credit_seconds=credit,
            )  # fmt: skip
        s.flush()
        for u in uses:
            started = u.ended - timedelta(seconds=u.wall)
            run = s.get(RunRow, u.run_id)
            if run is None:
                run = RunRow(
                    id=u.run_id, org_id=u.org_id, state="succeeded", spec={}, parallelism=1,
                    machine=u.machine, gang=False, created_at=started, shards=[],
                )  # fmt: skip
                s.add(run)
            shard = ShardRow(index=len(run.shards), state="succeeded", attempts=1, failures=0)
            attempt = AttemptRow(
                run_id=run.id, number=1, state="succeeded", started_at=started, ended_at=u.ended
            )
            shard.history = [attempt]
            run.shards.append(shard)
            s.flush()
            billing.record(s, [billing.usage(attempt, run)])
    return sessions


def _random_uses(rng: random.Random, n: int) -> list[Use]:
    """Usage of two orgs over 2024-11..2026-02, times to the millisecond; walls in quarter
    seconds and units powers of two, so every sum is exact in any order."""
    lo = _t("2024-11-01")
    span = int((_t("2026-03-01") - lo).total_seconds() * 1000)
    machines = ["nano", "small", "standard", "large", "xlarge"]
    runs = {
        f"wrk_{k:02d}": (rng.choice(["org_a", "org_b"]), rng.choice(machines)) for k in range(40)
    }
    uses = []
    for _ in range(n):
        run_id = rng.choice(sorted(runs))
        org_id, machine = runs[run_id]
        ended = lo + timedelta(milliseconds=rng.randrange(span))
        uses.append(Use(org_id, run_id, machine, ended, rng.randrange(1, 40_000) / 4))
    return uses


WINDOWS = [  # (from, to): aligned, mid-month on either side, empty, one instant, long
    ("2024-11-01", "2026-03-01"),
    ("2025-01-01", "2025-02-01"),
    ("2025-01-15", "2025-02-01"),
    ("2025-01-15 12:34:56.789", "2025-01-20"),
    ("2025-01-31 23:59:59.999", "2025-02-01 00:00:00.001"),
    ("2025-03-17", "2025-11-03 07:00"),
    ("2025-12-31 23:00", "2026-02-28 23:59:59.999999"),
    ("1970-01-01", "1979-12-31"),  # before any usage
    ("2026-02-10", "2036-02-10"),  # ten years, mostly empty
]


@pytest.mark.parametrize("credit", [0.0, 3_000.0, 25_000.0, 1e12])
def test_report_matches_the_reference(tmp_path: Path, credit: float) -> None:
    rng = random.Random(f"usage-{credit}")
    uses = _random_uses(rng, 300)
    sessions = _store(tmp_path, uses, {"org_a": credit, "org_b": credit / 2})
    picks = sorted(u.ended for u in rng.sample(uses, 12))
    windows = [(_t(a), _t(b)) for a, b in WINDOWS] + list(zip(picks[::2], picks[1::2], strict=True))
    windows += [(u.ended, u.ended + timedelta(microseconds=1)) for u in uses[:3]]  # one row
    with sessions() as s:
        for org_id in ("org_a", "org_b"):
            org = s.get(OrgRow, org_id)
            assert org is not None
            for start, end in windows:
                got = billing.report(s, org, start, end)
                want = reference(uses, org_id, orgs.limits(org).monthly_credit_seconds, start, end)
                assert (
                    got.compute_seconds,
                    got.credits_applied,
                    got.billable_seconds,
                    [(r.run_id, r.compute_seconds) for r in got.by_run],
                    [(m.machine, m.wall_seconds, m.compute_seconds) for m in got.by_machine],
                ) == want, (org_id, start, end)


NOW = _t("2026-11-20 10:00")
OK = [  # (from, to) as the query gives them -> [start, end)
    (None, None, "2026-11-01", "2026-11-20 10:00"),
    ("2026-10-01", None, "2026-10-01", "2026-11-20 10:00"),
    (None, "2026-11-02", "2026-11-01", "2026-11-02"),
    ("2026-10-01T05:00:00+05:00", "2026-10-02T00:00:00Z", "2026-10-01", "2026-10-02"),
    ("1970-01-01", "1980-01-01", "1970-01-01", "1980-01-01"),  # exactly ten years
    ("2024-02-29", "2034-03-01", "2024-02-29", "2034-03-01"),
    ("9999-12-01", "9999-12-31", "9999-12-01", "9999-12-31"),  # was a 500
    ("9995-01-01", "9999-12-31 23:59:59.999999", "9995-01-01", "9999-12-31 23:59:59.999999"),
]
REFUSED = [  # (from, to) -> the field and rule of the 422
    ("0001-01-01", "9999-11-30", "from", "between 1970-01-01 and 9999-12-31"),
    ("1969-12-31 23:59:59.999999", "1970-02-01", "from", "between 1970-01-01 and 9999-12-31"),
    ("1970-01-01T00:30:00+01:00", "1970-02-01", "from", "between 1970-01-01 and 9999-12-31"),
    ("2026-01-01", "9999-12-31T23:00:00-05:00", "to", "between 1970-01-01 and 9999-12-31"),
    ("2026-01-01", "1969-01-01", "to", "between 1970-01-01 and 9999-12-31"),
    ("2026-12-01", "2026-11-01", "from", "earlier than to"),
    ("2026-11-01", "2026-11-01", "from", "earlier than to"),
    ("2036-01-01", None, "from", "earlier than to"),
    ("2016-01-01", "2026-01-01 00:00:00.000001", "from", "at most 10 years before to"),
    ("2010-01-01", None, "from", "at most 10 years before to"),
]


def _q(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@pytest.mark.parametrize(("from_", "to", "start", "end"), OK)
def test_window(from_: str | None, to: str | None, start: str, end: str) -> None:
    assert billing.window(_q(from_), _q(to), NOW) == (_t(start), _t(end))


@pytest.mark.parametrize(("from_", "to", "field", "rule"), REFUSED)
def test_window_refused(from_: str, to: str | None, field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as err:
        billing.window(_q(from_), _q(to), NOW)
    (detail,) = err.value.details
    assert detail["field"] == field and rule in detail["rule"] and detail["fix"]
    assert err.value.message.startswith(f"{field}: ")


def test_usage_query_strings(server: Server) -> None:
    """What ``from``/``to`` accept over HTTP: ISO 8601 dates and datetimes, with and
    without a zone; a range out of bounds is a 422 naming the field, never a 500."""
    ok = [
        ("2026-11-01", "2026-12-01"),
        ("2026-11-01T00:00:00", "2026-12-01T00:00:00"),
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00+00:00"),
        ("2026-11-01 05:30:00+05:30", "2026-11-30T19:00:00-05:00"),
        ("1970-01-01", "1980-01-01"),
        ("9999-12-01", "9999-12-31"),
    ]
    for from_, to in ok:
        r = server.http.get("/v1/usage", params={"from": from_, "to": to})
        assert r.status_code == 200, (from_, to, r.text)
        body = r.json()
        assert body["from"].startswith(from_[:10]) and body["computeSeconds"] == 0
    for from_, to, field, _rule in REFUSED:
        params = {"from": from_} | ({"to": to} if to else {})
        r = server.http.get("/v1/usage", params=params)
        assert r.status_code == 422, (from_, to, r.text)
        assert r.json()["details"][0]["field"] == field
    assert server.http.get("/v1/usage", params={"from": "soon"}).status_code == 422


def test_day_sums_add_up_within_and_across_batches(tmp_path: Path) -> None:
    """``record`` adds each batch to its runs' day sums (an upsert), per UTC day."""
    t = _t("2025-03-10 23:59:59.5")
    uses = [Use("org_a", "wrk_1", "large", t + timedelta(seconds=k), 1.25) for k in range(4)]
    rows = [_usage_row(n, u) for n, u in enumerate(uses)]
    sessions = _store(tmp_path, [], {"org_a": 0.0})
    for batch in (rows[:1], rows[1:3], rows[3:]):
        with sessions.begin() as s:
            billing.record(s, batch)
    with sessions() as s:
        days = s.execute(select(UsageDayRow.day, UsageDayRow.compute_seconds)).all()
    assert sorted(days) == [("2025-03-10", 2.5), ("2025-03-11", 7.5)]


def test_migration_fills_the_day_sums(tmp_path: Path) -> None:
    """A store with usage before ``usage_days`` existed reports the same after 0010."""
    rng = random.Random("migrate")
    uses = _random_uses(rng, 200)
    engine = make_engine(database_url_for(tmp_path))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0009")
        conn.execute(insert(OrgRow), [_org_row(o) for o in ("org_a", "org_b")])
        rows = [_usage_row(n, u) for n, u in enumerate(uses)]
        old = [{k: v for k, v in row.items() if k != "billed"} for row in rows]  # before 0014
        conn.execute(insert(UsageRow), old)
    migrate(engine)
    with session_factory(engine)() as s:
        for org_id in ("org_a", "org_b"):
            org = s.get(OrgRow, org_id)
            assert org is not None
            start, end = _t("2024-12-15 10:00"), _t("2026-01-20")
            got = billing.report(s, org, start, end)
            want = reference(uses, org_id, orgs.limits(org).monthly_credit_seconds, start, end)
            assert (got.compute_seconds, got.credits_applied, got.billable_seconds) == want[:3]
            assert [(r.run_id, r.compute_seconds) for r in got.by_run] == want[3]
    engine.dispose()


def _org_row(org_id: str) -> dict[str, Any]:
    return {"id": org_id, "name": org_id.replace("_", "-"), "plan": "pro",
            "created_at": _t("2024-01-01"), "monthly_credit_seconds": 20_000.0}  # fmt: skip


def _usage_row(n: int, u: Use) -> dict[str, Any]:
    return {"attempt_id": n, "org_id": u.org_id, "run_id": u.run_id, "machine": u.machine,
            "started_at": u.ended - timedelta(seconds=u.wall), "ended_at": u.ended,
            "wall_seconds": u.wall, "units": MACHINES[u.machine].units,
            "compute_seconds": u.compute, "billed": True}  # fmt: skip
