"""Each active run's spec, read from the store and parsed once per version of its row.

A pass reads every active run, and a spec can be large: one at the limits of the spec model
is about 1 MB of JSON (its command, env and the merge step's). Loading that column for every
queued run on every pass made a pass cost ~4 ms per such run, whatever it decided (100 of
them: 380 ms a pass, the store's write lock held throughout, every tenant's submits waiting
behind it). So the pass's query leaves the column out (:data:`ACTIVE_RUNS`), and a spec is
read -- for all the runs that need it in one query -- only for a run whose ``(id,
version)`` this reconciler has not parsed yet.

And what is kept is lean: a spec whose commands and env (the run's and its merge step's)
are over :data:`LEAN_ABOVE` bytes is kept without them (a :class:`LeanSpec`), which no
decision of a pass needs; a launch, and a rewrite of the stored spec, read the whole one
again (:meth:`Specs.full`). Kept whole, 4,096 queued runs of an enterprise org at the
spec model's limits held ~5 GB of the control plane's memory, every tenant's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, defer

from sylphx._core.spec import RunSpec
from sylphx._server.store import RunRow

from . import survey
from .bulkhead import PASS_LEVEL

__all__ = ["ACTIVE_RUNS", "LEAN_ABOVE", "LeanSpec", "Specs"]

LEAN_ABOVE = 64 << 10  # bytes of commands and env kept in a parsed spec; past it, lean
WHOLE_KEPT = 32  # whole specs of lean ones kept between passes (~1.2 MB each at most)

# in the order they joined the queue: a run reopened by a retry joins it again at the back
ACTIVE_RUNS = (
    select(RunRow)
    .options(defer(RunRow.spec))
    .where(RunRow.state.in_(survey.ACTIVE))
    .order_by(func.coalesce(RunRow.reopened_at, RunRow.created_at), RunRow.id)
)
CHUNK = 500  # ids per query (well under SQLite's bound on a statement's variables)


class LeanSpec(RunSpec):
    """A run's spec without its commands and env, kept between passes: never stored nor
    launched (:meth:`Specs.full` reads the whole one)."""

    def to_wire(self) -> dict[str, Any]:
        """Never: the stored spec would lose its commands and env."""
        raise RuntimeError("a lean spec is never stored: write Specs.full(...)'s instead")


def _heavy(spec: RunSpec) -> int:
    """The bytes of ``spec``'s commands and env, its merge step's with them."""
    parts = [(spec.command or [], spec.env)]
    if spec.merge is not None:
        parts.append((spec.merge.command, spec.merge.env))
    return sum(
        sum(map(len, command)) + sum(len(k) + len(v) for k, v in env.items())
        for command, env in parts
    )


def _lean(spec: RunSpec) -> RunSpec:
    """``spec`` as kept between passes (see the module)."""
    if _heavy(spec) <= LEAN_ABOVE:
        return spec
    merge = spec.merge.model_copy(update={"command": [], "env": {}}) if spec.merge else None
    values = {**dict(spec), "command": [], "env": {}, "merge": merge}
    return LeanSpec.model_construct(spec.model_fields_set, **values)


class Specs:
    """The parsed specs of the runs the last pass kept, by ``(run id, row version)``."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, int], RunSpec] = {}
        self._drift: set[str] = set()  # runs whose spec was read at another version
        self._staged: dict[tuple[str, int], RunSpec] | None = None  # see keep()
        # the whole specs read for lean ones lately, by run: (the lean one, the whole)
        self._whole: dict[str, tuple[RunSpec, RunSpec]] = {}

    def parse(
        self, s: Session, runs: list[RunRow]
    ) -> tuple[dict[str, RunSpec], dict[str, Exception]]:
        """Each run's spec, and the error of each run whose spec does not parse."""
        specs: dict[str, RunSpec] = {}
        failed: dict[str, Exception] = {}
        stored = self._stored(s, [run for run in runs if (run.id, run.version) not in self._parsed])
        for run in runs:
            try:
                spec = self._parsed.get((run.id, run.version))
                specs[run.id] = spec or _lean(RunSpec.model_validate(stored[run.id]))
            except PASS_LEVEL:
                raise
            except Exception as exc:
                failed[run.id] = exc
        return specs, failed

    def full(self, s: Session, run_id: str, spec: RunSpec) -> RunSpec:
        """The whole of ``spec`` (the one a pass has of the run): read again if lean, and
        kept for the next passes while ``spec`` is the one kept (a run that starts its
        shards in waves pays for one read, not ~15 ms every pass; at most WHOLE_KEPT)."""
        if not isinstance(spec, LeanSpec):
            return spec
        kept = self._whole.get(run_id)
        if kept is not None and kept[0] is spec:
            return kept[1]
        whole = RunSpec.model_validate(s.scalar(select(RunRow.spec).where(RunRow.id == run_id)))
        self._whole.pop(run_id, None)
        if len(self._whole) >= WHOLE_KEPT:
            del self._whole[next(iter(self._whole))]  # the oldest
        self._whole[run_id] = (spec, whole)
        return whole

    def keep(self, runs: list[RunRow], specs: dict[str, RunSpec]) -> None:
        """Keep ``specs`` of ``runs`` (the pass's live ones, its writes flushed: the spec of
        each as of its row's new version) for the next pass, once :meth:`committed`; the
        others are forgotten then."""
        self._staged = {
            (run.id, run.version): _lean(specs[run.id]) for run in runs if run.id not in self._drift
        }

    def committed(self) -> None:
        """The pass that called :meth:`keep` committed: its versions are the store's."""
        if self._staged is not None:
            self._parsed, self._staged = self._staged, None

    def _stored(self, s: Session, runs: list[RunRow]) -> dict[str, Any]:
        """The stored spec of each of ``runs``: the row's own if it was loaded, else read
        with those of the others in a query. A row changed between the pass's two reads
        (another process wrote it) has the newer spec used now, and not kept."""
        self._drift = set()
        found = {run.id: run.spec for run in runs if "spec" not in inspect(run).unloaded}
        rest = {run.id: run.version for run in runs if run.id not in found}
        ids = list(rest)
        for i in range(0, len(ids), CHUNK):
            query = select(RunRow.id, RunRow.version, RunRow.spec)
            for run_id, version, spec in s.execute(query.where(RunRow.id.in_(ids[i : i + CHUNK]))):
                found[run_id] = spec
                if version != rest[run_id]:
                    self._drift.add(run_id)
        return found
