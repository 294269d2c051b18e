"""The reconciler's event metrics (Prometheus): what its passes did, counted as they do it.

Pass duration, exits settled, preemptions and admission latency are events of the process
that reconciles -- with ``--workers N`` only the holder of the lease; the others record
nothing, and ``/metrics`` sums every worker's (prometheus-client's multiprocess mode, see
``http/metrics.py``). What a pass decides is counted only once its transaction commits: a
pass rolled back is done again by the next one, which must not count it twice. The steps
note their events on the pass's session (:func:`exits`, :func:`preempted`,
:func:`started`); a hook on that session's commit emits them.

Admission latency is a run's wait from its submit (or its retry) to the moment all its
shards had started running: observed in the pass that started the last of them, from the
attempts' stored start times (each shard's first attempt that ran), so a run is observed
once however its starts were spread over passes, processes or lease holders.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter, Histogram
from sqlalchemy import bindparam, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from sylphx._server.store import RunRow
from sylphx._server.store.records import ATTEMPTS, SHARDS

__all__ = ["ADMISSION", "EXITS", "PASSES", "PASS_FAILURES", "PREEMPTIONS", "timed_pass"]

PASSES = Histogram(
    "sylphx_reconcile_pass_seconds",
    "Duration of one reconcile pass (failed ones included), in the lease holder.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PASS_FAILURES = Counter(
    "sylphx_reconcile_pass_failures", "Reconcile passes that failed and were rolled back."
)
EXITS = Counter(
    "sylphx_exits_settled",
    "Ended attempts the reconciler recorded, by outcome (the attempt's final state).",
    ["outcome"],
)
PREEMPTIONS = Counter(
    "sylphx_preemptions",
    "Opportunistic attempts the scheduler asked to stop to make room for a gang run.",
)
ADMISSION = Histogram(
    "sylphx_admission_latency_seconds",
    "From a run's submit (or retry) until every one of its shards had started running.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
)

log = logging.getLogger("sylphx.reconciler")
_KEY = "sylphx.telemetry"
_FIRST_RAN = (  # when each shard of some runs first ran (attempts that never ran: no start)
    select(ATTEMPTS.c.run_id, func.min(ATTEMPTS.c.started_at).label("first"))
    .join_from(ATTEMPTS, SHARDS, ATTEMPTS.c.shard_id == SHARDS.c.id)
    .where(
        ATTEMPTS.c.run_id.in_(bindparam("run_ids", expanding=True)),
        ATTEMPTS.c.started_at.is_not(None),
        SHARDS.c.index >= 0,  # the merge step is not a shard
    )
    .group_by(ATTEMPTS.c.run_id, ATTEMPTS.c.shard_id)
    .subquery()
)
_ALL_RAN = select(_FIRST_RAN.c.run_id, func.count(), func.max(_FIRST_RAN.c.first)).group_by(
    _FIRST_RAN.c.run_id
)


@dataclass
class _Noted:
    """What one pass (one session) noted, emitted when it commits."""

    exits: Tally[str] = field(default_factory=Tally)
    preemptions: int = 0
    starts: dict[str, set[datetime]] = field(default_factory=dict)  # run id -> start times
    admitted: list[float] = field(default_factory=list)  # seconds, found before the commit


def _noted(s: Session) -> _Noted:
    noted = s.info.get(_KEY)
    if noted is None:
        noted = s.info[_KEY] = _Noted()
        event.listen(s, "before_commit", _before_commit)
        event.listen(s, "after_commit", _after_commit)
    assert isinstance(noted, _Noted)
    return noted


def exits(s: Session, outcomes: Iterable[str]) -> None:
    """Attempts whose ends the pass stored, by their final state."""
    _noted(s).exits.update(outcomes)


def preempted(s: Session, n: int) -> None:
    """Attempts the pass asked to stop for a preemption."""
    if n:
        _noted(s).preemptions += n


def started(s: Session, run_id: str, when: datetime) -> None:
    """A shard of ``run_id`` started running at ``when`` (stored on its attempt)."""
    _noted(s).starts.setdefault(run_id, set()).add(when)


def _before_commit(s: Session) -> None:
    """Still in the pass's transaction: the runs whose last shard to run started now."""
    noted = s.info.get(_KEY)
    if s.in_nested_transaction() or not isinstance(noted, _Noted) or not noted.starts:
        return
    starts, noted.starts = noted.starts, {}
    try:
        rows = s.execute(_ALL_RAN, {"run_ids": list(starts)}).all()
    except SQLAlchemyError:  # the commit that follows fails too: the pass's to handle
        raise
    except Exception:  # a metric is never worth a pass
        log.exception("admission latency not measured")
        return
    for run_id, ran, last in rows:
        run = s.get(RunRow, run_id)
        if run is not None and ran == run.parallelism and last in starts[run_id]:
            submitted = run.reopened_at or run.created_at
            noted.admitted.append(max((last - submitted).total_seconds(), 0.0))


def _after_commit(s: Session) -> None:
    """The pass committed: what it noted happened."""
    noted = s.info.get(_KEY)
    if s.in_nested_transaction() or not isinstance(noted, _Noted):
        return
    s.info[_KEY] = _Noted()  # a session used again notes afresh (its listeners stay)
    try:
        for outcome, n in noted.exits.items():
            EXITS.labels(outcome).inc(n)
        if noted.preemptions:
            PREEMPTIONS.inc(noted.preemptions)
        for seconds in noted.admitted:
            ADMISSION.observe(seconds)
    except Exception:  # committed all the same
        log.exception("reconciler metrics not counted")


@contextmanager
def timed_pass() -> Iterator[None]:
    """Time one pass into :data:`PASSES`; one that raises also counts in PASS_FAILURES."""
    began = time.perf_counter()
    try:
        yield
    except BaseException:
        PASS_FAILURES.inc()
        raise
    finally:
        PASSES.observe(time.perf_counter() - began)
