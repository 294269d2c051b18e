"""Shard logs: read whole or followed live, straight from the attempt's log files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import NotFound, ValidationError
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.states import ShardState
from sylphx._server.executors.local.shardlog import Redactor
from sylphx._server.store import AttemptRow, RunRow, ShardRow

Stream = Literal["stdout", "stderr"]
CHUNK = 256 * 1024
FOLLOW_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Where:
    """Where a shard's log lives right now."""

    shard_done: bool
    attempt: int | None  # newest attempt number, None before the first start
    path: str | None
    attempt_done: bool
    legacy: bool = False  # written before secrets were masked at capture (migration 0008)


def locate(
    s: Session, run_id: str, org_id: str, index: int, stream: Stream, attempt: int | None
) -> Where:
    run = owned_run(s, run_id, org_id)
    shard = s.scalars(
        select(ShardRow).where(ShardRow.run_id == run_id, ShardRow.index == index)
    ).first()
    if shard is None and index == MERGE_INDEX:
        fix = "give a merge step in the run's spec (merge.command) to have one"
        raise ValidationError(
            f"merge: run {run_id} has no merge step. Fix: {fix}.",
            details=[{"field": "merge", "rule": "the run has no merge step", "fix": fix}],
        )
    if shard is None:  # the index is past the run's parallelism
        fix = f"pick a shard from 0 to {run.parallelism - 1}"
        raise ValidationError(
            f"shard: run {run_id} has no shard {index}. Fix: {fix}.",
            details=[{"field": "shard", "rule": f"must be below {run.parallelism}", "fix": fix}],
        )
    query = select(AttemptRow).where(AttemptRow.shard_id == shard.id)
    if attempt is not None:
        query = query.where(AttemptRow.number == attempt)
    row = s.scalars(query.order_by(AttemptRow.number.desc())).first()
    if attempt is not None and row is None:
        fix = f"pick an attempt from 1 to {shard.attempts}" if shard.attempts else "omit attempt"
        raise ValidationError(
            f"attempt: {_named(index)} of run {run_id} has no attempt {attempt}"
            f" (it has {shard.attempts}). Fix: {fix}.",
            details=[{"field": "attempt", "rule": f"must be {shard.attempts} or less", "fix": fix}],
        )
    if row is None:
        return where_of(shard.state, None, None, ended=True, legacy=False)
    path = row.stdout_path if stream == "stdout" else row.stderr_path
    return where_of(
        shard.state, row.number, path, ended=row.ended_at is not None, legacy=bool(row.legacy_log)
    )


def owned_run(s: Session, run_id: str, org_id: str) -> RunRow:
    """The org's run; NotFound for an unknown id and for another org's run alike."""
    run = s.get(RunRow, run_id)
    if run is None or run.org_id != org_id:
        raise NotFound(f"run {run_id!r} not found. Fix: check the id with `sylphx runs list`.")
    return run


def where_of(
    shard_state: str, attempt: int | None, path: str | None, *, ended: bool, legacy: bool
) -> Where:
    """The :class:`Where` of a shard in ``shard_state`` whose newest attempt (None: none
    yet) writes ``path``."""
    done = ShardState(shard_state).terminal
    if attempt is None:
        return Where(done, None, None, True)
    return Where(done, attempt, path, ended, legacy)


def _named(index: int) -> str:
    return "the merge step" if index == MERGE_INDEX else f"shard {index}"


async def stream_log(
    sessions: sessionmaker[Session],
    run_id: str,
    org_id: str,
    index: int,
    stream: Stream,
    *,
    attempt: int | None,
    follow: bool,
    legacy_secrets: Callable[[], list[str]] = list,
) -> AsyncIterator[bytes]:
    """Yield the log's bytes as stored; with ``follow``, keep yielding until the shard
    ends (moving on to the next attempt when a failed one is retried). A log written
    before secrets were masked at capture is masked now, with ``legacy_secrets()``."""
    inner = _stream_log(sessions, run_id, org_id, index, stream, attempt=attempt, follow=follow)
    redactor: Redactor | None = None
    async for legacy, chunk in inner:
        if legacy and redactor is None:
            redactor = Redactor(await anyio.to_thread.run_sync(legacy_secrets))
        yield chunk if redactor is None else redactor.feed(chunk)
    if redactor is not None:
        yield redactor.flush()


async def _stream_log(
    sessions: sessionmaker[Session],
    run_id: str,
    org_id: str,
    index: int,
    stream: Stream,
    *,
    attempt: int | None,
    follow: bool,
) -> AsyncIterator[tuple[bool, bytes]]:
    """:func:`stream_log`'s chunks, each with whether its attempt's log is a legacy one."""

    def where() -> Where:
        with sessions() as s:
            return locate(s, run_id, org_id, index, stream, attempt)

    tail = Tail(pinned=attempt)
    current = await anyio.to_thread.run_sync(where)
    while True:
        async for _, legacy, chunk in tail.advance(current, follow=follow):
            yield legacy, chunk
        if tail.done:
            return
        await anyio.sleep(FOLLOW_POLL_SECONDS)
        try:
            current = await anyio.to_thread.run_sync(where)
        except NotFound:  # the run was deleted while followed: its log ends here
            return


@dataclass
class Tail:
    """A reader's place in one shard's log, followed across its attempts: fed what a look
    at the store found (a :class:`Where`) each time, it reads what is new. Both the
    one-shard stream and the all-shard one (:mod:`.all_logs`) follow a shard with it."""

    pinned: int | None = None  # the attempt asked for; None: the newest, moving on to retries
    reading: int | None = None  # the attempt whose log is read
    path: str | None = None
    legacy: bool = False
    offset: int = 0
    done: bool = False  # everything there will be was read
    behind: bool = False  # the budget stopped the last read before the log's end

    async def advance(
        self, current: Where, *, follow: bool, budget: int | None = None
    ) -> AsyncIterator[tuple[int, bool, bytes]]:
        """The bytes written since the last look, as (attempt, legacy, chunk); at most
        ``budget`` bytes of the current attempt's (None: to its end). A retry that
        started is followed from its top, once the attempt before it is drained. Sets
        :attr:`done` when nothing more will come: at once without ``follow``, else once
        the attempt ended with its shard (or is the one pinned) and was read to its end."""
        if self.reading is None:
            self.reading = current.attempt
        if current.attempt is not None and current.attempt != self.reading:
            if self.path is not None and self.reading is not None:  # its last bytes
                async for chunk, _ in _read_from(self.path, self.offset):
                    yield self.reading, self.legacy, chunk
            self.reading, self.offset, self.path = current.attempt, 0, None
        drained = True
        if current.attempt is not None and current.attempt == self.reading:
            self.path, self.legacy = current.path, current.legacy
            if self.path is not None:
                got = 0
                async for chunk, end in _read_from(self.path, self.offset, budget):
                    self.offset, got = end, got + len(chunk)
                    yield current.attempt, self.legacy, chunk
                drained = budget is None or got < budget
        ended = current.attempt_done and (current.shard_done or self.pinned is not None)
        self.done = drained and (not follow or ended)
        self.behind = not drained


async def _read_from(
    path: str, offset: int, limit: int | None = None
) -> AsyncIterator[tuple[bytes, int]]:
    """The file's bytes from ``offset`` (at most ``limit`` of them), each chunk with the
    offset after it; nothing for a file not written yet."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; kept open across awaits
    except FileNotFoundError:
        return
    try:
        fh.seek(offset)
        while limit is None or limit > 0:
            chunk = fh.read(CHUNK if limit is None else min(CHUNK, limit))
            if not chunk:
                break
            if limit is not None:
                limit -= len(chunk)
            offset += len(chunk)
            yield chunk, offset
            await anyio.sleep(0)
    finally:
        fh.close()


def remove(paths: list[str], logs_dir: Path) -> None:
    """Remove a deleted run's log files (those under ``logs_dir``) and the folders they
    leave empty. Best effort: a file already gone is no error."""
    root = os.path.realpath(logs_dir) + "/"
    folders = set()
    for path in paths:
        real = os.path.realpath(path)
        if not real.startswith(root):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(real)
        folders.add(os.path.dirname(real))
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty (another writer): left alone
            os.rmdir(folder)
