"""Every shard's log in one response: newline-delimited JSON, one record per read of whole
lines of one shard (``{"shard": 7, "attempt": 1, "data": "...", "ts": "...Z"}``).

One coroutine serves a response, however many shards it follows: each round it looks up
every selected shard in one query (its state and newest attempt), then reads what each
shard's log gained since the last round, with the one-shard stream's :class:`~.logs.Tail`.
A shard's partial line waits for its newline (or the attempt's end), so a record holds
whole lines and two shards' lines never mix."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import NotFound, ValidationError
from sylphx._core.indexes import OutOfRange, expand
from sylphx._core.states import ShardState
from sylphx._server.executors.local.shardlog import Redactor
from sylphx._server.store import AttemptRow, ShardRow

from .logs import CHUNK, Stream, Tail, Where, owned_run, where_of

__all__ = ["FAILED", "open_all"]

POLL_SECONDS = 0.2  # one look at the store per round, for every shard followed
ROUND_BYTES = 4 * CHUNK  # read per shard and round while following: no shard starves the rest
LONGEST_PARTIAL = CHUNK  # a line longer than this is sent in pieces
FAILED = (ShardState.FAILED, ShardState.TIMED_OUT)
_INDICES_FIX = 'give a compressed index set such as "0-3,7"'


@dataclass(frozen=True)
class Look:
    """A shard as one round found it."""

    state: ShardState
    where: Where


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


def chosen(indices: str | None, parallelism: int) -> list[int]:
    """The indices ``indices`` names (None: every shard), each below ``parallelism``."""
    if indices is None:
        return list(range(parallelism))
    try:
        out = expand(indices, below=parallelism)
    except OutOfRange as exc:
        fix = f"name indices from 0 to {parallelism - 1}"
        raise ValidationError(
            f"indices: index {exc.index} does not exist: the run has {parallelism} shards"
            f" (0-{parallelism - 1}). Fix: {fix}.",
            details=[{"field": "indices", "rule": f"index {exc.index} does not exist", "fix": fix}],
        ) from None
    except ValueError:
        out = []
    if not out:
        raise ValidationError(
            f"indices: {indices[:60]!r} is not an index set. Fix: {_INDICES_FIX}.",
            details=[{"field": "indices", "rule": "not an index set", "fix": _INDICES_FIX}],
        )
    return out


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
) -> AsyncIterator[bytes]:
    """Check the request (NotFound, ValidationError: raised here, before any byte) and
    return the body: the selected shards' logs as NDJSON records.

    Without ``follow``, each shard's log as it is now, shard after shard. With it, the
    records come as the lines do, and the body ends when every selected shard has ended
    and its log is drained, moving on to retries as the one-shard stream does.
    ``failed``: only shards that ended failed or timed_out, each read whole once ended
    (with ``follow``, also those that end so later; the others are dropped as they end)."""

    def look() -> tuple[int, dict[int, Look]]:
        with sessions() as s:
            return looks(s, run_id, org_id, stream)

    parallelism, first = await anyio.to_thread.run_sync(look)
    shards = {index: _Shard(index) for index in chosen(indices, parallelism)}
    return _rounds(shards, first, look, failed=failed, follow=follow, secrets=legacy_secrets)


async def _rounds(
    shards: dict[int, _Shard],
    found: dict[int, Look],
    look: Callable[[], tuple[int, dict[int, Look]]],
    *,
    failed: bool,
    follow: bool,
    secrets: Callable[[], list[str]],
) -> AsyncIterator[bytes]:
    """The body: one round per look at the store, until every shard is done."""
    values = _Secrets(secrets)
    budget = ROUND_BYTES if follow else None
    while True:
        for shard in shards.values():
            current = found.get(shard.index)
            async for out in shard.round(current, failed, follow, budget, values):
                yield out
        if all(shard.tail.done for shard in shards.values()):
            return
        if not any(shard.tail.behind for shard in shards.values()):
            await anyio.sleep(POLL_SECONDS)
        try:
            found = (await anyio.to_thread.run_sync(look))[1]
        except NotFound:  # the run was deleted while followed: its logs end here
            for shard in shards.values():
                if out := shard.end():
                    yield out
            return


class _Secrets:
    """The values of the run's secrets, read once and only if a legacy log needs them."""

    def __init__(self, read: Callable[[], list[str]]) -> None:
        self._read = read
        self._values: list[str] | None = None

    async def values(self) -> list[str]:
        if self._values is None:
            self._values = await anyio.to_thread.run_sync(self._read)
        return self._values


@dataclass
class _Shard:
    """One shard of the response: where its log is read, its partial line, and (for a
    log written before masking at capture) its redactor."""

    index: int
    tail: Tail = field(default_factory=Tail)
    attempt: int | None = None  # the attempt the partial line belongs to
    partial: str = ""
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    redactor: Redactor | None = None

    async def round(
        self,
        current: Look | None,
        failed: bool,
        follow: bool,
        budget: int | None,
        secrets: _Secrets,
    ) -> AsyncIterator[bytes]:
        """This round's records of the shard, as ``current`` found it."""
        if current is None:  # no such shard row
            self.tail.done = True
        if self.tail.done or current is None or (failed and not self._failed(current, follow)):
            return
        async for attempt, legacy, chunk in self.tail.advance(
            current.where, follow=follow, budget=budget
        ):
            if out := self.feed(attempt, chunk, await secrets.values() if legacy else None):
                yield out
        if self.tail.done and (out := self.end()):
            yield out

    def _failed(self, current: Look, follow: bool) -> bool:
        """Whether the shard ended failed: to be read now; one that ended otherwise (or,
        not following, has not ended) is done."""
        if not current.where.shard_done:
            self.tail.done = not follow  # following: wait for its end
            return False
        self.tail.done = current.state not in FAILED
        return not self.tail.done

    def feed(self, attempt: int, chunk: bytes, secrets: list[str] | None) -> bytes:
        """The records of the whole lines ``chunk`` completes (a new attempt's chunk
        first ends the attempt before it)."""
        out = self.end() if self.attempt is not None and attempt != self.attempt else b""
        self.attempt = attempt
        if secrets is not None:
            self.redactor = self.redactor or Redactor(secrets)
            chunk = self.redactor.feed(chunk)
        text = self.partial + self.decoder.decode(chunk)
        cut = text.rfind("\n") + 1
        if len(text) - cut > LONGEST_PARTIAL:
            cut = len(text)
        self.partial = text[cut:]
        return out + self._record(text[:cut])

    def end(self) -> bytes:
        """The record of what is left of the attempt read (a last line without newline)."""
        tail = self.redactor.flush() if self.redactor is not None else b""
        text = self.partial + self.decoder.decode(tail, final=True)
        self.partial, self.redactor = "", None
        self.decoder.reset()
        return self._record(text)

    def _record(self, data: str) -> bytes:
        if not data or self.attempt is None:
            return b""
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"shard": self.index, "attempt": self.attempt, "data": data, "ts": ts}
        return json.dumps(line, ensure_ascii=False).encode() + b"\n"
