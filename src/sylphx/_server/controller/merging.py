"""The merge step of a run (spec ``merge``, see ``_core.merge``): once every shard of the
run has ended, it is skipped when its ``when`` does not hold, or put to the queue policy
as one shard of its own tier; and the manifest it is fed (``SYLPHX_MANIFEST``).

The step is the run's shard row ``MERGE_INDEX``: launched, settled, stopped, billed and
logged as a shard is (with ``RunSpec.for_index``), never counted among the shards."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from sylphx._core.merge import MERGE_INDEX, when_text
from sylphx._core.spec import RunSpec
from sylphx._core.states import ShardState
from sylphx._server.store import RunRow
from sylphx._server.store.records import ShardRecord, update_shards

from . import survey
from .bulkhead import Bulkhead
from .transitions import transition

MERGING = "deciding whether its merge step starts"


def for_queue(
    s: Session,
    bh: Bulkhead,
    runs: list[RunRow],
    counts: dict[str, Counter[ShardState]],
    specs: dict[str, RunSpec],
    now: datetime,
) -> dict[str, tuple[bool, str]] | None:
    """The active runs' merge steps for the queue policy: live (True) or ready to start
    (False), with their tiers; a step whose ``when`` does not hold is skipped (see
    :func:`decide`, one bulkhead per run). None: no active run has a merge step (not
    asked of the store when no active run's spec has one: a step exists only for those)."""
    if all(run.id in specs and specs[run.id].merge is None for run in runs):
        return None
    steps = survey.merges(s)
    if not steps:
        return None
    ready = bh.each(
        s,
        [run for run in bh.live(runs) if run.id in steps],
        MERGING,
        lambda run: decide(s, run, specs[run.id], counts[run.id], steps[run.id], now),
    )
    out = {run_id: (False, tier) for run_id, tier in ready.items() if tier}
    for run_id, step in steps.items():
        merge = specs[run_id].merge if run_id in specs else None
        if ShardState(step.state).live and merge is not None:
            out[run_id] = (True, merge.machine or specs[run_id].machine)
    return out


def decide(
    s: Session,
    run: RunRow,
    spec: RunSpec,
    counts: Counter[ShardState],
    step: ShardRecord | None,
    now: datetime,
) -> str | None:
    """The tier of the run's merge step when it may start now (every shard ended and
    ``when`` holds); a step whose ``when`` does not hold is skipped (stored). None when
    there is nothing to start."""
    if spec.merge is None or step is None or step.state != ShardState.PENDING:
        return None
    if run.cancel_requested_at is not None or run.fail_reason is not None:
        return None  # its pending step is cancelled with the run's other pending shards
    ended = sum(n for state, n in counts.items() if state.terminal)
    if ended < spec.parallelism:
        return None
    succeeded = counts[ShardState.SUCCEEDED]
    if spec.merges(succeeded):
        if step.not_before is not None and step.not_before > now:
            return None  # a failed merge waits out its retry delay (1 s, doubling)
        return spec.merge.machine or spec.machine
    skipped = replace(step)
    transition(skipped, ShardState.SKIPPED, now)
    skipped.reason = (
        f"Skipped: when {when_text(spec.merge.when)} did not hold"
        f" ({succeeded}/{spec.parallelism} indices succeeded)"
    )
    update_shards(s, [skipped], ("state", "reason", "ended_at"))
    return None


def manifest(s: Session, run: RunRow) -> str:
    """The merge step's manifest: every index of the run with its status, exit code,
    attempts, duration, reason and log sizes (of its latest attempt), as JSON."""
    shards = []
    for shard, latest in survey.load_shards(s, [run])[run.id]:
        if shard.index == MERGE_INDEX:
            continue
        duration = None
        if shard.started_at is not None and shard.ended_at is not None:
            duration = round((shard.ended_at - shard.started_at).total_seconds(), 3)
        out, err = (latest.stdout_path, latest.stderr_path) if latest else (None, None)
        shards.append(
            {
                "index": shard.index,
                "status": shard.state,
                "exitCode": shard.exit_code,
                "attempts": shard.attempts,
                "durationSeconds": duration,
                "reason": shard.reason,
                "stdoutBytes": _size(out),
                "stderrBytes": _size(err),
            }
        )
    states = Counter(shard["status"] for shard in shards)
    return json.dumps(
        {
            "runId": run.id,
            "shardCount": run.parallelism,
            "reopened": run.reopened or 0,
            "counts": {state.value: states[state.value] for state in ShardState if states[state]},
            "succeededIndices": [sh["index"] for sh in shards if sh["status"] == "succeeded"],
            "shards": shards,
        },
        indent=1,
    )


def _size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def note(run_id: str, step: ShardRecord | None) -> str | None:
    """What the run's message says of its ended merge step (None: nothing to say)."""
    if step is None:
        return None
    state = ShardState(step.state)
    hint = f"see: sylphx runs logs {run_id} --merge --stderr"
    if state is ShardState.FAILED:
        return f"merge failed: exit {step.exit_code} ({step.reason or 'Error'}); {hint}"
    if state is ShardState.TIMED_OUT:
        return f"merge timed out ({step.reason or 'DeadlineExceeded'}); {hint}"
    if state is ShardState.SKIPPED:
        return f"merge {(step.reason or 'skipped').lower()}"
    return None
