"""A pass reads a run's spec from the store once per version of its row, not every pass: a
tenant's queued runs with specs at the spec model's limits (~1 MB each) made every pass
cost ~4 ms a run, holding the store's write lock, every tenant's submits behind it
(found by an attack review). Table-driven on the session's store (SQLite or PostgreSQL),
with the stub executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from conftest import database_url_for
from sylphx._server.controller.policy.admission import Resources
from sylphx._server.controller.specs import LeanSpec
from test_reconciler import Harness

BIG = {f"V{i}": "x" * 60_000 for i in range(4)}  # 240 KB of env: a large spec


def _spec_reads(h: Harness) -> list[str]:
    """The statements the reconciler's passes send from now on that read the runs' spec
    column (the harness's own reads of a run's view are not counted)."""
    seen: list[str] = []
    real = h.reconciler.tick

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "runs.spec" in statement:
            seen.append(statement)

    def tick() -> None:
        event.listen(h.sessions.kw["bind"], "before_cursor_execute", before)
        try:
            real()
        finally:
            event.remove(h.sessions.kw["bind"], "before_cursor_execute", before)

    h.reconciler.tick = tick  # type: ignore[method-assign]
    return seen


def test_queued_runs_specs_are_read_once_then_only_when_their_row_changes(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, database_url_for(tmp_path))  # the session's store
    h.executor.resources = Resources.of_host(1.1, 64 << 30)
    h.submit(machine="standard")  # holds the only vCPU: the runs below queue behind it
    queued = [h.submit(machine="standard", env=BIG) for _ in range(3)]
    late = h.submit(
        machine="standard", env=BIG, admissionTimeoutSeconds=60, admissionFallback="opportunistic"
    )
    reads = _spec_reads(h)
    h.tick()
    assert len(reads) == 1  # every spec of the pass in one query
    for _ in range(3):
        h.tick(1)
    assert len(reads) == 1, reads  # nothing re-read: the parsed specs are kept
    for run_id in queued:
        assert h.run(run_id)["status"] == "queued"
    kept = h.reconciler._specs._parsed
    assert all(
        isinstance(spec, LeanSpec) and not spec.env for spec in kept.values() if spec.env != {}
    )
    assert sum(isinstance(spec, LeanSpec) for spec in kept.values()) == 4  # BIG: kept lean
    h.tick(60)  # the admission fallback rewrites ``late``'s spec: a new version of its row
    stored = h.run(late)["spec"]
    assert stored["gangScheduling"] is False and stored["env"] == BIG  # made of the whole
    assert len(reads) == 2 and "runs.id = " in reads[1]  # read whole, once, to rewrite it
    h.tick(1)
    h.tick(1)
    assert len(reads) == 2  # the pass kept what it wrote: the new spec is not read back
    h.executor.finish_all(0)
    envs = []
    for _ in range(8):  # one standard run at a time
        h.tick(1)
        envs += [request.env for request in h.executor.live.values()]
        h.executor.finish_all(0)
    assert [h.run(run_id)["status"] for run_id in [*queued, late]] == ["succeeded"] * 4
    assert envs == [BIG] * 4  # each launched whole: read once more, by its id
    assert len(reads) == 2 + 4
