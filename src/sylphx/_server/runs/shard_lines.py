"""The all-shard log stream's reader (:mod:`.all_logs`): each round, what every selected
shard's log gained, cut into NDJSON records of whole lines.

A round is one blocking call, made on the log streams' threads (:mod:`.streams`): for each
shard it stats the log file (opening it only when it grew), reads at most
:data:`SHARD_BYTES` of it, masks a legacy log, and encodes the records; a round reads
:data:`ROUND_BYTES` at most over all its shards (following, the next round starts where
this one stopped, so no shard starves the rest).

A shard's unfinished line (its *partial*) is kept as bytes and waits for its newline (or
the attempt's end); only whole lines, or a piece cut between two UTF-8 sequences, are
decoded. A partial longer than :data:`LONGEST_PARTIAL` bytes is sent as a piece, and one
response holds :data:`HELD_BYTES` of partials at most over all its shards: past that, the
longest goes out as a piece. The records are JSON with every non-ASCII character escaped,
so no code point in a line (U+2028, U+0085...) can be taken for a line break by a reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sylphx._core.states import ShardState
from sylphx._server.executors.local.shardlog import Redactor

from .logs import CHUNK, Secrets, Tail, Where

__all__ = [
    "FAILED",
    "HELD_BYTES",
    "LONGEST_PARTIAL",
    "POLL_SECONDS",
    "ROUND_BYTES",
    "SHARD_BYTES",
    "Look",
    "Reader",
    "Shard",
    "utf8_cut",
]

POLL_SECONDS = 0.2  # following: the pause between looks at the store while lines come
SHARD_BYTES = CHUNK  # following: read per shard and round at most
ROUND_BYTES = 4 * CHUNK  # read per round (one thread call) at most, over every shard
LONGEST_PARTIAL = CHUNK  # bytes: a line longer than this is sent in pieces
HELD_BYTES = 4 << 20  # partial lines one response holds at most, over all its shards
FAILED = (ShardState.FAILED, ShardState.TIMED_OUT)


@dataclass(frozen=True)
class Look:
    """A shard as one look at the store found it."""

    state: ShardState
    where: Where


def utf8_cut(data: bytes) -> int:
    """Where to cut ``data`` so that no UTF-8 sequence is cut short: its length, or the
    start of a sequence its last bytes begin and do not finish."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:  # ASCII: nothing is cut
            return end
        if byte >= 0xC0:  # the lead byte of a sequence of `need` bytes
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if need > back else end
    return end  # continuation bytes only: not UTF-8 anyway (decoded with replacements)


@dataclass
class Shard:
    """One shard of the response: where its log is read, its partial line (bytes), and
    (for a log written before masking at capture) its redactor."""

    index: int
    tail: Tail = field(default_factory=Tail)
    attempt: int | None = None  # the attempt the partial line belongs to
    partial: bytes = b""
    redactor: Redactor | None = None

    def round(self, current: Look | None, budget: int, reader: Reader) -> tuple[int, list[bytes]]:
        """Blocking: the bytes read this round (at most ``budget``) and the records of the
        shard, as ``current`` found it."""
        if current is None:  # no such shard row
            self.tail.done = True
        if self.tail.done or current is None:
            return 0, []
        if reader.failed and not self._failed(current, reader.follow):
            return 0, []
        got, out = 0, []
        read = self.tail.advance(current.where, follow=reader.follow, budget=budget)
        for attempt, legacy, chunk in read:
            got += len(chunk)
            out += self.feed(attempt, chunk, reader.secrets if legacy else None)
        if self.tail.done:
            out += self.end()
        return got, out

    def _failed(self, current: Look, follow: bool) -> bool:
        """Whether the shard ended failed: to be read now; one that ended otherwise (or,
        not following, has not ended) is done."""
        if not current.where.shard_done:
            self.tail.done = not follow  # following: wait for its end
            return False
        self.tail.done = current.state not in FAILED
        return not self.tail.done

    def feed(self, attempt: int, chunk: bytes, secrets: Secrets | None) -> list[bytes]:
        """The records of the whole lines ``chunk`` completes (a new attempt's chunk
        first ends the attempt before it); ``secrets``: a legacy log's, to mask."""
        out = self.end() if self.attempt is not None and attempt != self.attempt else []
        self.attempt = attempt
        if secrets is not None:
            self.redactor = self.redactor or Redactor(secrets.values())
            chunk = self.redactor.feed(chunk)
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > LONGEST_PARTIAL:
            cut = utf8_cut(data)
        self.partial = data[cut:]
        return out + self._record(data[:cut])

    def piece(self) -> list[bytes]:
        """The record of the partial line so far (all but an unfinished UTF-8 sequence)."""
        cut = utf8_cut(self.partial)
        data, self.partial = self.partial[:cut], self.partial[cut:]
        return self._record(data)

    def end(self) -> list[bytes]:
        """The record of what is left of the attempt read (a last line without newline)."""
        rest = self.redactor.flush() if self.redactor is not None else b""
        data = self.partial + rest
        self.partial, self.redactor = b"", None
        return self._record(data)

    def _record(self, data: bytes) -> list[bytes]:
        if not data or self.attempt is None:
            return []
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        text = data.decode(errors="replace")
        line = {"shard": self.index, "attempt": self.attempt, "data": text, "ts": ts}
        return [json.dumps(line, ensure_ascii=True).encode() + b"\n"]


class Reader:
    """Every selected shard of one response, read a round at a time (blocking calls,
    made on a thread; the coroutine that owns it makes one at a time)."""

    def __init__(
        self, shards: list[Shard], secrets: Secrets, *, failed: bool, follow: bool
    ) -> None:
        self.shards = shards
        self.secrets = secrets
        self.failed = failed
        self.follow = follow
        self.held = 0  # bytes of partial lines held, over every shard
        self.behind = False  # the last round left bytes unread
        self.moved = False  # the last round read something
        self._next = 0  # following: where the next round starts

    @property
    def done(self) -> bool:
        """Whether every shard is done."""
        return all(shard.tail.done for shard in self.shards)

    def round(self, found: dict[int, Look]) -> bytes:
        """Blocking: the records of what the shards' logs gained, as ``found`` says
        where they are: :data:`ROUND_BYTES` read at most; following, at most
        :data:`SHARD_BYTES` per shard, from where the last round stopped; else shard
        after shard in their order."""
        out: list[bytes] = []
        left, count = ROUND_BYTES, len(self.shards)
        start = self._next if self.follow else 0
        for k in range(start, start + count):
            shard = self.shards[k % count]
            if shard.tail.done:
                continue
            if left <= 0:
                self._next = k % count
                break
            budget = min(SHARD_BYTES, left) if self.follow else left
            before = len(shard.partial)
            got, records = shard.round(found.get(shard.index), budget, self)
            left -= got
            self.held += len(shard.partial) - before
            out += records
            out += self._spill()
        self.moved = left < ROUND_BYTES
        self.behind = left <= 0 or any(shard.tail.behind for shard in self.shards)
        return b"".join(out)

    def _spill(self) -> list[bytes]:
        """Past :data:`HELD_BYTES` of partial lines, the longest ones' records, as pieces."""
        out: list[bytes] = []
        while self.held > HELD_BYTES:
            longest = max(self.shards, key=lambda shard: len(shard.partial))
            before = len(longest.partial)
            records = longest.piece()
            self.held -= before - len(longest.partial)
            if not records:  # nothing left to cut (cannot be: HELD_BYTES is far above 3)
                break
            out += records
        return out

    def end(self) -> bytes:
        """Blocking: the records of what every shard holds (the run is gone)."""
        out = [record for shard in self.shards for record in shard.end()]
        self.held = 0
        return b"".join(out)
