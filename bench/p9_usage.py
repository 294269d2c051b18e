"""P9: ``GET /v1/usage`` over a year of usage rows, against the month walk it replaced.

A real ``sylphx server`` subprocess (SQLite, `harness.Server`) gets a year (2025) of usage
rows for its org: by default 200 runs a day of 32 shards, one attempt each, i.e. 6,400
attempts a day and 2,336,000 usage rows in the year; machines nano/small/standard/large
in turn, walls 1-600 s. The rows go straight into the ``usage`` table (deterministic,
generated in SQL), and their sums by UTC day, run and machine into ``usage_days``, as
``billing.record`` keeps them (73,000 rows); the runs, shards and attempts they would
belong to are not made: the report reads only those two tables.

Each window is timed four ways, interleaved round by round, on the same store:

- **old month walk** (the baseline): a copy of ``billing.report`` before #17, two SUM
  queries per calendar month of the window plus every row of the window fetched into
  Python for the per-run and per-machine breakdown; in this process, no HTTP;
- **one SUM of the rows**: ``SELECT sum(compute_seconds) FROM usage`` over the window, the
  least any answer that reads every usage row does (not an answer: no credits, no
  breakdown);
- **report()**: today's ``billing.report`` in this process, no HTTP: the window's whole
  days from ``usage_days``, its partial days from ``usage``;
- **GET /v1/usage**: the endpoint on the server, with its key, JSON (one entry per run:
  73,000 for the year) and loopback HTTP.

    python bench/p9_usage.py [--runs-per-day 200] [--shards 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from harness import Server, machine, table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sylphx._core.views import UsageReport
from sylphx._server.store import OrgRow, UsageRow, make_engine, session_factory
from sylphx._server.tenancy import billing
from sylphx._server.tenancy.orgs import limits

YEAR = datetime(2025, 1, 1, tzinfo=UTC)
WINDOWS = [  # (name, from, to)
    ("one month", "2025-06-01", "2025-07-01"),
    ("one year", "2025-01-01", "2026-01-01"),
    ("10 years", "2016-01-01", "2026-01-01"),
    ("10 years, no usage", "2030-01-01", "2040-01-01"),
]

# One row per (run, shard): run r of the year starts (r * 7919) % 86,000 s into its day;
# its shards run 1-600 s. Times are written as SQLAlchemy writes UTCDateTime on SQLite.
SEED = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :rows - 1),
a AS (
  SELECT i, i / :shards AS r, 1 + ((i * 2654435761) % 599000) / 1000.0 AS wall,
         CASE (i / :shards) % 4 WHEN 0 THEN 'nano' WHEN 1 THEN 'small'
              WHEN 2 THEN 'standard' ELSE 'large' END AS machine
  FROM n),
b AS (
  SELECT *, :t0 + (r / :per_day) * 86400 + (r * 7919) % 86000 AS t,
         CASE machine WHEN 'nano' THEN 0.125 WHEN 'small' THEN 0.5
              WHEN 'standard' THEN 1.0 ELSE 2.0 END AS units
  FROM a)
INSERT INTO usage (attempt_id, org_id, run_id, machine, started_at, ended_at,
                   wall_seconds, units, compute_seconds)
SELECT i + 1, 'org_bench', printf('wrk_%07d', r), machine,
       strftime('%Y-%m-%d %H:%M:%f', t, 'unixepoch') || '000',
       strftime('%Y-%m-%d %H:%M:%f', t + wall, 'unixepoch') || '000',
       wall, units, wall * units
FROM b
"""
DAYS = """
INSERT INTO usage_days (org_id, day, run_id, machine, wall_seconds, compute_seconds)
SELECT org_id, substr(ended_at, 1, 10), run_id, machine, sum(wall_seconds), sum(compute_seconds)
FROM usage GROUP BY org_id, substr(ended_at, 1, 10), run_id, machine
"""


def seed(path: str, per_day: int, shards: int) -> int:
    """Write the year's usage rows, and their day sums as ``billing.record`` keeps them."""
    rows = per_day * shards * 365
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA synchronous=OFF")
        params = {"rows": rows, "shards": shards, "per_day": per_day, "t0": YEAR.timestamp()}
        with con:
            con.execute(SEED, params)
            con.execute(DAYS)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("ANALYZE")
    finally:
        con.close()
    return rows


def old_report(s: Session, org: OrgRow, start: datetime, end: datetime) -> dict[str, Any]:
    """``billing.report`` as it was before #17 (returning the numbers, not the model)."""

    def month_start(t: datetime) -> datetime:
        return datetime(t.year, t.month, 1, tzinfo=UTC)

    def next_month(t: datetime) -> datetime:
        return datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)

    def total(lo: datetime, hi: datetime) -> float:
        window = (UsageRow.org_id == org.id, UsageRow.ended_at >= lo, UsageRow.ended_at < hi)
        return float(s.scalar(select(func.sum(UsageRow.compute_seconds)).where(*window)) or 0.0)

    credit = limits(org).monthly_credit_seconds
    used = applied = 0.0
    month = month_start(start)
    while month < end:
        lo, hi = max(start, month), min(end, next_month(month))
        before = total(month, lo)
        within = total(lo, hi)
        applied += min(max(credit - before, 0.0), within)
        used += within
        month = next_month(month)
    rows = s.execute(
        select(
            UsageRow.run_id, UsageRow.machine, UsageRow.wall_seconds, UsageRow.compute_seconds
        ).where(UsageRow.org_id == org.id, UsageRow.ended_at >= start, UsageRow.ended_at < end)
    ).all()
    by_run: dict[str, float] = defaultdict(float)
    by_machine: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for run_id, mach, wall, compute in rows:
        by_run[run_id] += compute
        by_machine[mach][0] += wall
        by_machine[mach][1] += compute
    return {"compute": round(used, 3), "applied": round(applied, 3), "runs": len(by_run)}


def one_sum(s: Session, org: OrgRow, start: datetime, end: datetime) -> float:
    window = (UsageRow.org_id == org.id, UsageRow.ended_at >= start, UsageRow.ended_at < end)
    return float(s.scalar(select(func.sum(UsageRow.compute_seconds)).where(*window)) or 0.0)


def timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - start, out


def cell(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} ({min(samples):.3f}-{max(samples):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-per-day", type=int, default=200)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"P9 on {machine()}", flush=True)
    with Server() as server:
        path = server.env["SYLPHX_DATABASE_URL"].removeprefix("sqlite:///")
        took, rows = timed(seed, path, args.runs_per_day, args.shards)
        print(f"seeded {rows:,} usage rows ({args.runs_per_day} runs/day x {args.shards} shards"
              f" x 365 days) in {took:.1f} s", flush=True)  # fmt: skip
        engine = make_engine(server.env["SYLPHX_DATABASE_URL"])
        sessions = session_factory(engine)
        times: dict[tuple[str, str], list[float]] = defaultdict(list)
        counts: dict[str, tuple[int, int]] = {}
        for _ in range(args.rounds):
            for name, lo, hi in WINDOWS:
                start, end = (datetime.fromisoformat(t).replace(tzinfo=UTC) for t in (lo, hi))
                with sessions() as s:
                    org = s.get(OrgRow, "org_bench")
                    assert org is not None
                    t_old, old = timed(old_report, s, org, start, end)
                    t_sum, _ = timed(one_sum, s, org, start, end)
                    t_new, new = timed(billing.report, s, org, start, end)
                params = {"from": f"{lo}T00:00:00Z", "to": f"{hi}T00:00:00Z"}
                t_get, r = timed(server.http.get, "/v1/usage", params=params)
                r.raise_for_status()
                got = r.json()
                assert isinstance(old, dict) and isinstance(new, UsageReport)
                same = (old["compute"], old["applied"]) == (got["computeSeconds"],
                                                           got["creditsApplied"])  # fmt: skip
                if not same or old["runs"] != len(got["byRun"]):
                    raise RuntimeError(f"{name}: old {old} != new {got['computeSeconds']}")
                counts[name] = (int(rows_in(sessions, start, end)), len(got["byRun"]))
                for what, t in (("old", t_old), ("sum", t_sum), ("new", t_new), ("get", t_get)):
                    times[name, what].append(t)
        engine.dispose()
    out = []
    for name, lo, hi in WINDOWS:
        n_rows, n_runs = counts[name]
        old, get = statistics.median(times[name, "old"]), statistics.median(times[name, "get"])
        out.append(
            [name, f"{lo}..{hi}", f"{n_rows:,}", f"{n_runs:,}", cell(times[name, "old"]),
             cell(times[name, "sum"]), cell(times[name, "new"]), cell(times[name, "get"]),
             f"{get / old:.2f}x"]
        )  # fmt: skip
    table(
        f"P9: usage report over {rows:,} usage rows (a year, {args.runs_per_day} runs/day x"
        f" {args.shards} shards); seconds, median (min-max) of {args.rounds} rounds;"
        " ratio = GET / old month walk",
        ["window", "from..to", "rows", "runs", "old month walk", "one SUM of the rows",
         "report()", "GET /v1/usage", "ratio"],
        out,
    )  # fmt: skip


def rows_in(sessions: Callable[[], Session], start: datetime, end: datetime) -> int:
    with sessions() as s:
        window = (UsageRow.ended_at >= start, UsageRow.ended_at < end)
        return int(s.scalar(select(func.count()).where(*window)) or 0)


if __name__ == "__main__":
    main()
