"""Every shard's log in one response: newline-delimited JSON, one record per read of whole
lines of one shard (``{"shard": 7, "attempt": 1, "data": "...", "ts": "...Z"}``).

One coroutine serves a response, however many shards it follows: each round it looks up
every selected shard in one query (its state and newest attempt), then reads what each
shard's log gained since the last round (:class:`~.shard_lines.Reader`, with the one-shard
stream's :class:`~.logs.Tail`), both in one blocking call each on the log streams' threads.
A shard's partial line waits for its newline (or the attempt's end), so a record holds
whole lines and two shards' lines never mix; a line over 256 KiB is sent in pieces. While
nothing changes, the looks come less often: every 0.2 s at first, up to every second."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import anyio
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import NotFound
from sylphx._core.indexes import of_run
from sylphx._core.states import ShardState
from sylphx._server.store import AttemptRow, ShardRow

from .logs import Run, Secrets, Stream, in_thread, owned_run, slower, where_of
from .shard_lines import POLL_SECONDS, Look, Reader, Shard

__all__ = ["open_all"]


def looks(s: Session, run_id: str, org_id: str, stream: Stream) -> tuple[int, dict[int, Look]]:
    """The org's run's parallelism and each shard's state and newest attempt, in two
    queries (NotFound for an unknown run or another org's)."""
    run = owned_run(s, run_id, org_id)
    newest = (
        select(AttemptRow.shard_id, func.max(AttemptRow.number).label("number"))
        .where(AttemptRow.run_id == run_id)
        .group_by(AttemptRow.shard_id)
        .subquery()
    )
    path = AttemptRow.stdout_path if stream == "stdout" else AttemptRow.stderr_path
    rows = s.execute(
        select(
            ShardRow.index,
            ShardRow.state,
            AttemptRow.number,
            path,
            AttemptRow.ended_at,
            AttemptRow.legacy_log,
        )
        .select_from(ShardRow)
        .outerjoin(newest, newest.c.shard_id == ShardRow.id)
        .outerjoin(
            AttemptRow,
            and_(AttemptRow.shard_id == ShardRow.id, AttemptRow.number == newest.c.number),
        )
        .where(ShardRow.run_id == run_id, ShardRow.index >= 0)
    )
    found = {
        index: Look(
            ShardState(state),
            where_of(state, number, at, ended=ended is not None, legacy=bool(legacy)),
        )
        for index, state, number, at, ended, legacy in rows
    }
    return run.parallelism, found


async def open_all(
    sessions: sessionmaker[Session],
    run_id: str,
    org_id: str,
    stream: Stream,
    *,
    indices: str | None,
    failed: bool,
    follow: bool,
    legacy_secrets: Callable[[], list[str]] = list,
    run: Run = in_thread,
) -> AsyncIterator[bytes]:
    """Check the request (NotFound, ValidationError: raised here, before any byte) and
    return the body: the selected shards' logs as NDJSON records.

    Without ``follow``, each shard's log as it is now, shard after shard. With it, the
    records come as the lines do, and the body ends when every selected shard has ended
    and its log is drained, moving on to retries as the one-shard stream does.
    ``failed``: only shards that ended failed or timed_out, each read whole once ended
    (with ``follow``, also those that end so later; the others are dropped as they end).
    Every blocking step (the store, the files, masking, encoding) is ``run`` on a thread."""

    def look() -> tuple[int, dict[int, Look]]:
        with sessions() as s:
            return looks(s, run_id, org_id, stream)

    parallelism, first = await run(look)
    picked = range(parallelism) if indices is None else of_run(indices, parallelism, "the run")
    shards = [Shard(index) for index in picked]
    reader = Reader(shards, Secrets(legacy_secrets), failed=failed, follow=follow)
    return _rounds(reader, first, look, run)


async def _rounds(
    reader: Reader,
    found: dict[int, Look],
    look: Callable[[], tuple[int, dict[int, Look]]],
    run: Run,
) -> AsyncIterator[bytes]:
    """The body: a round of reads per look at the store, until every shard is done.
    Following, the pause between looks grows while nothing changes; a round the read
    budget stopped is followed by the next at once (with a look at most every
    :data:`POLL_SECONDS`)."""
    pause, changed, looked = POLL_SECONDS, True, time.monotonic()
    while True:
        out: bytes = await run(reader.round, found)
        if out:
            yield out
        if reader.done:
            return
        if not reader.follow:  # only the read budget stopped the round: read on
            continue
        if reader.behind and time.monotonic() - looked < POLL_SECONDS:
            continue
        if not reader.behind:
            pause = slower(pause, changed or reader.moved, POLL_SECONDS)
            await anyio.sleep(pause)
        try:
            now: dict[int, Look] = (await run(look))[1]
        except NotFound:  # the run was deleted while followed: its logs end here
            if out := await run(reader.end):
                yield out
            return
        changed, found, looked = now != found, now, time.monotonic()
