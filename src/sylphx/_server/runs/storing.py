"""How submits are stored: the submits of a batch in one transaction, or one alone (see
:mod:`.submits` for who stores a batch, and why). A submit's refusals (402, 404, 409, 422,
429) are raised before it writes anything; its RunView's JSON is rendered before the
commit, so a run whose answer cannot be sent is not stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import ConflictError, SylphxError
from sylphx._core.machines import Resources
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.spec import RunSpec
from sylphx._core.states import ShardState
from sylphx._core.views import ShardView
from sylphx._server.executors import Executor
from sylphx._server.store import OrgRow, RunRow
from sylphx._server.tenancy import spend

from . import service
from .submits import Submit

__all__ = ["Storing"]


@dataclass(frozen=True)
class Storing:
    """Stores submits over the service's parts."""

    sessions: sessionmaker[Session]
    executor: Executor
    now: Callable[[], datetime]
    wake: Callable[[], None]

    def batch(self, asks: list[Submit]) -> None:
        """Store ``asks`` in one transaction (see :mod:`.submits`); wake the reconciler.
        Each is checked in turn; the new runs and their shards are inserted together
        (one executemany per table) before the commit."""
        new: list[tuple[dict[str, Any], RunSpec]] = []
        stored = False  # some run inserted (the reconciler to wake)
        with self.sessions.begin() as s:
            orgs: dict[str, tuple[OrgRow, list[int]] | SylphxError] = {}
            capacity, now = self.executor.capacity(), self.now()
            for org_id in sorted({ask.org_id for ask in asks}):  # in one order: no deadlock
                try:  # locked once; its shards in use counted once
                    orgs[org_id] = _lock_org(s, org_id, now)
                except SylphxError as exc:  # 402: every submit of that org
                    orgs[org_id] = exc
            keys: set[tuple[str, str]] = set()  # the idempotency keys of the runs in new
            for ask in asks:
                try:
                    locked = orgs[ask.org_id]
                    if isinstance(locked, SylphxError):
                        raise locked
                    row, in_use = locked
                    if ask.key is not None and (ask.org_id, ask.key) in keys:
                        service.insert_runs(s.connection(), new)  # its replay must see it
                        stored, new, keys = True, [], set()
                    ask.body, values = _store(s, ask, row, capacity, now, in_use[0])
                    if values is not None:
                        new.append((values, ask.spec))
                        in_use[0] += ask.spec.parallelism + bool(ask.spec.merge)
                        if ask.key is not None:
                            keys.add((ask.org_id, ask.key))
                except SylphxError as exc:  # refused before it wrote anything
                    ask.error = exc
            stored = stored or bool(new)
            if new:
                service.insert_runs(s.connection(), new)
        if stored:
            self.wake()

    def alone(self, ask: Submit) -> bytes:
        """Store one submit in its own transaction (a batch that failed, one by one)."""
        with self.sessions.begin() as s:
            now = self.now()
            org, in_use = _lock_org(s, ask.org_id, now)
            stored = s.get(RunRow, ask.run_id)  # its batch's COMMIT went through after all
            if stored is not None:
                return _as_it_is(s, stored)
            body, values = _store(s, ask, org, self.executor.capacity(), now, in_use[0])
            if values is not None:
                service.insert_runs(s.connection(), [(values, ask.spec)])
        self.wake()
        return body


def _lock_org(s: Session, org_id: str, now: datetime) -> tuple[OrgRow, list[int]]:
    """The org's row, locked (quota check + reservation in one step: the write session
    holds SQLite's write lock from BEGIN; on PostgreSQL, FOR UPDATE locks the org row),
    past its spend check, and its shards in use now."""
    org = s.get(OrgRow, org_id, with_for_update=True)
    assert org is not None
    spend.check(s, org, now)  # 402 at the monthly limit: the batch's runs add no usage
    return org, [service.shards_in_use(s, org.id)]


def _store(
    s: Session, ask: Submit, org: OrgRow, capacity: Resources, now: datetime, in_use: int
) -> tuple[bytes, dict[str, Any] | None]:
    """One submit checked in ``s``: its RunView's JSON and its new run's row, to insert
    (None for a repeated key: the run it made, as it is now). Its refusals raise before
    it writes anything."""
    spec, key = ask.spec, ask.key
    run = replay(s, org.id, key, spec)
    if run is not None:  # a repeated submit: the run it made, as it is now
        return _as_it_is(s, run), None
    values = service.new_run(
        s, spec, org, capacity=capacity, now=now, idempotency_key=key, in_use=in_use,
        run_id=ask.run_id, image_digests=ask.digests,
    )  # fmt: skip
    waiting = ShardView(index=MERGE_INDEX, status=ShardState.PENDING)
    counts = Counter({ShardState.PENDING: spec.parallelism})
    merge = waiting if spec.merge else None  # no ORM object, no second parse of the spec
    out = service.view(SimpleNamespace(**values), counts, merge=merge, spec=spec)
    # rendered before the commit: a run whose answer cannot be sent is not stored
    return out.model_dump_json(by_alias=True).encode(), values


def replay(s: Session, org_id: str, key: str | None, spec: RunSpec) -> RunRow | None:
    """The run an earlier submit with idempotency ``key`` stored (None: a new submit);
    ConflictError when that key came with another spec."""
    if key is None:
        return None
    run = s.scalars(
        select(RunRow).where(RunRow.org_id == org_id, RunRow.idempotency_key == key)
    ).first()
    if run is not None and run.spec != spec.to_wire():
        fix = "use a new key for a new run (the SDK makes one per submit)"
        raise ConflictError(
            f"Idempotency-Key {key!r} was used for run {run.id} with another spec. Fix: {fix}.",
            details=[{"field": "Idempotency-Key", "rule": "one key, one spec", "fix": fix}],
        )
    return run


def _as_it_is(s: Session, run: RunRow) -> bytes:
    """The RunView's JSON of a stored run, as it is now."""
    merge = service.merge_views(s, [run]).get(run.id)
    out = service.view(run, service.state_counts(s, [run.id])[run.id], merge=merge)
    return out.model_dump_json(by_alias=True).encode()
