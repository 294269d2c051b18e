"""Shard logs: read whole or followed live, straight from the attempt's log files.

Every blocking step of a stream (a look at the store, a stat and read of a log file, the
masking of a legacy log) runs on a thread, the log streams' own (see :mod:`.streams`): the
event loop only passes the bytes on. A followed log is looked at every 0.1 s while it
changes, less often (up to every second) while it does not; a file is opened only when it
grew."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import NotFound, ValidationError
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.states import ShardState
from sylphx._server.executors.local.shardlog import Redactor
from sylphx._server.store import AttemptRow, RunRow, ShardRow

Stream = Literal["stdout", "stderr"]
T = TypeVar("T")
CHUNK = 256 * 1024  # one read of a log file at most
ONE_READ = 4 * CHUNK  # the one-shard stream reads this much per thread call at most
FOLLOW_POLL_SECONDS = 0.1  # the one-shard stream's pause while its log changes ...
IDLE_POLL_SECONDS = 1.0  # ... doubling up to this while it does not (any followed stream)


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


Run = Callable[..., Awaitable[Any]]  # runs a blocking call on the log streams' threads


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in anyio's default thread pool (when no limiter of its own is given)."""
    return await anyio.to_thread.run_sync(fn, *args)


def slower(pause: float, changed: bool, first: float) -> float:
    """The pause before the next look at the store: ``first`` after a look or a read that
    found something new, else twice the last one, up to :data:`IDLE_POLL_SECONDS`."""
    return first if changed else min(pause * 2, IDLE_POLL_SECONDS)


class Secrets:
    """The values of the run's secrets, read once and only if a legacy log needs them
    (blocking: a store read, made on the thread that asks)."""

    def __init__(self, read: Callable[[], list[str]]) -> None:
        self._read = read
        self._values: list[str] | None = None

    def values(self) -> list[str]:
        if self._values is None:
            self._values = self._read()
        return self._values


async def open_log(
    sessions: sessionmaker[Session],
    run_id: str,
    org_id: str,
    index: int,
    stream: Stream,
    *,
    attempt: int | None,
    follow: bool,
    last: int | None = None,
    legacy_secrets: Callable[[], list[str]] = list,
    run: Run = in_thread,
) -> AsyncIterator[bytes]:
    """Check the request (NotFound, ValidationError: raised here, before any byte) and
    return the body: the log's bytes as stored; with ``follow``, until the shard ends
    (moving on to the next attempt when a failed one is retried); with ``last``, from
    that many bytes before the end the log has now (the rest of the file is never read;
    a legacy log, masked as it is read, is read whole).
    A log written before secrets were masked at capture is masked now, with
    ``legacy_secrets()``. Every blocking step (the store, the file, masking) is ``run``
    on a thread."""

    def where() -> Where:
        with sessions() as s:
            return locate(s, run_id, org_id, index, stream, attempt)

    current: Where = await run(where)
    shard = _OneShard(attempt, Secrets(legacy_secrets))
    if last is not None and current.path is not None and not current.legacy:
        # (a legacy log is masked as it is read: read whole, a secret cut in two by the
        # start would not be recognised)
        shard.tail.offset = await run(tail_offset, current.path, last)
    return _one(current, where, shard, follow, run)


def tail_offset(path: str, last: int) -> int:
    """Blocking: where the file's last ``last`` bytes start (0 for a shorter or missing
    file)."""
    try:
        return max(0, os.stat(path).st_size - max(0, last))
    except FileNotFoundError:
        return 0


async def _one(
    current: Where, where: Callable[[], Where], shard: _OneShard, follow: bool, run: Run
) -> AsyncIterator[bytes]:
    """:func:`open_log`'s body: a read of what is new per look at the store, pausing
    longer while nothing changes."""
    pause, changed = FOLLOW_POLL_SECONDS, True
    while True:
        chunks: list[bytes] = await run(shard.step, current, follow)
        for chunk in chunks:
            yield chunk
        if shard.tail.done:
            return
        if shard.tail.behind:  # the budget stopped the read: read on at once
            continue
        pause = slower(pause, changed or bool(chunks), FOLLOW_POLL_SECONDS)
        await anyio.sleep(pause)
        try:
            looked: Where = await run(where)
        except NotFound:  # the run was deleted while followed: its log ends here
            if rest := shard.mask.flush():
                yield rest
            return
        changed, current = looked != current, looked


class _Mask:
    """Masks the secrets in a legacy log's bytes (from the first legacy chunk on)."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self.redactor: Redactor | None = None

    def feed(self, legacy: bool, chunk: bytes) -> bytes:
        if legacy and self.redactor is None:
            self.redactor = Redactor(self.secrets.values())
        return chunk if self.redactor is None else self.redactor.feed(chunk)

    def flush(self) -> bytes:
        return self.redactor.flush() if self.redactor is not None else b""


class _OneShard:
    """The one-shard stream's reader: its place in the log and its masking."""

    def __init__(self, pinned: int | None, secrets: Secrets) -> None:
        self.tail = Tail(pinned=pinned)
        self.mask = _Mask(secrets)

    def step(self, current: Where, follow: bool) -> list[bytes]:
        """Blocking: the chunks to send of what the log gained (at most ``ONE_READ``)."""
        read = self.tail.advance(current, follow=follow, budget=ONE_READ)
        out = [self.mask.feed(legacy, chunk) for _, legacy, chunk in read]
        if self.tail.done:
            out.append(self.mask.flush())
        return [chunk for chunk in out if chunk]


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

    def advance(
        self, current: Where, *, follow: bool, budget: int
    ) -> list[tuple[int, bool, bytes]]:
        """Blocking (file reads: call it on a thread). The bytes written since the last
        look, as (attempt, legacy, chunk), at most ``budget`` of them. A retry that
        started is followed from its top, once the attempt before it is drained. Sets
        :attr:`done` when nothing more will come: once read to the end without
        ``follow``, else once the attempt ended with its shard (or is the one pinned) and
        was read to its end; :attr:`behind` when the budget stopped the read."""
        out: list[tuple[int, bool, bytes]] = []
        if self.reading is None:
            self.reading = current.attempt
        if current.attempt is not None and current.attempt != self.reading:
            if self.path is not None and self.reading is not None:  # its last bytes
                chunks, self.offset = read_from(self.path, self.offset, budget)
                out += [(self.reading, self.legacy, chunk) for chunk in chunks]
                budget -= sum(map(len, chunks))
                if budget <= 0:  # more of it may be left: read on from there
                    self.done, self.behind = False, True
                    return out
            self.reading, self.offset, self.path = current.attempt, 0, None
        drained = True
        if current.attempt is not None and current.attempt == self.reading:
            self.path, self.legacy = current.path, current.legacy
            if self.path is not None:
                chunks, self.offset = read_from(self.path, self.offset, budget)
                out += [(current.attempt, self.legacy, chunk) for chunk in chunks]
                drained = sum(map(len, chunks)) < budget
        ended = current.attempt_done and (current.shard_done or self.pinned is not None)
        self.done = drained and (not follow or ended)
        self.behind = not drained
        return out


def read_from(path: str, offset: int, limit: int) -> tuple[list[bytes], int]:
    """Blocking: the file's bytes from ``offset`` (at most ``limit`` of them, in chunks of
    at most :data:`CHUNK`) and the offset after them. The file is opened only when its
    size grew past ``offset``; nothing for a file not written yet."""
    try:
        if os.stat(path).st_size <= offset:
            return [], offset
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return [], offset
    out: list[bytes] = []
    with fh:
        fh.seek(offset)
        while limit > 0:
            chunk = fh.read(min(CHUNK, limit))
            if not chunk:
                break
            out.append(chunk)
            limit -= len(chunk)
            offset += len(chunk)
    return out, offset


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
