"""A shard's output on its way to its log: secret values redacted, a size cap applied.

Standard library only, and no sylphx import: the attempt supervisor (:mod:`.supervise`,
run as ``python -I -S``) imports this file by its path, and the Ray task body
(:mod:`.ray_remote`) uses the same classes on the output it ships, so a spec's logs read
the same on both executors.

- :class:`Redactor` replaces every secret value in a byte stream with ``***`` while the
  stream arrives in chunks of any size, with exactly the result of redacting the whole
  stream at once: scanning left to right, at each position the longest value that starts
  there is masked and the scan goes on after it (for one value that is
  ``data.replace(value, b"***")``). It holds back at most (longest value - 1) bytes.
- :class:`Cap` counts a log's bytes; past its limit the rest is dropped and the log ends
  with :func:`marker`.
- :class:`Shaper` is the two together (redaction first), for output handled as bytes.
- :class:`PipeLog` moves one stream of a shard from the read end of its pipe to its log
  file: zero-copy (``splice``) when nothing needs redacting, through a :class:`Shaper`
  when something does. It keeps draining the pipe past the cap, so the shard's writes
  keep succeeding. A log that cannot be written (a full disk, a quota, an I/O error) is
  handled the same way: the rest is drained and dropped, and the log ends with
  :func:`lost_marker`, appended if there is room, else over the log's own last bytes
  (already on disk: no new blocks needed).
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # typing and collections.abc would slow the supervisor's start
if TYPE_CHECKING:
    from collections.abc import Iterable

MASK = b"***"
SPLICE_BYTES = 1 << 20  # the most one splice() asks to move
READ_BYTES = 1 << 20  # the most one read() takes (a pipe holds 64 KiB unless enlarged)


def marker(limit: int) -> bytes:
    """The line a log ends with once output beyond ``limit`` bytes was dropped."""
    return (
        f"\n[sylphx: log truncated at {limit} bytes (SYLPHX_MAX_LOG_BYTES);"
        " further output dropped]\n"
    ).encode()


FULL = (errno.ENOSPC, errno.EDQUOT)


def lost_marker(exc: OSError) -> bytes:
    """The line a log ends with once writing it failed and further output was dropped."""
    why = exc.strerror or type(exc).__name__
    return f"\n[sylphx: log truncated: {why}; further output dropped]\n".encode()


class Redactor:
    """Masks ``values`` in a stream fed in chunks (see the module doc for the rule)."""

    __slots__ = ("keep", "tail", "values")

    def __init__(self, values: Iterable[str | bytes]) -> None:
        found = {v.encode() if isinstance(v, str) else bytes(v) for v in values}
        found.discard(b"")
        # longest first: of the values that start at one position, the longest is masked
        self.values = sorted(found, key=lambda v: (-len(v), v))
        self.keep = len(self.values[0]) - 1 if self.values else 0
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """The part of the stream so far that is settled, redacted."""
        if not self.values:
            return chunk
        data = self.tail + chunk if self.tail else chunk
        limit = len(data) - self.keep  # every value that starts before this fits in data
        if limit <= 0:
            self.tail = bytes(data)
            return b""
        return self._mask(data, limit)

    def flush(self) -> bytes:
        """The rest, at the end of the stream."""
        data, self.tail = self.tail, b""
        return self._mask(data, len(data)) if data else b""

    def _mask(self, data: bytes, limit: int) -> bytes:
        """Redact the matches in ``data`` that start before ``limit``; keep from the first
        undecided position on (the end of the last match, or ``limit``) as the tail."""
        values = self.values
        nexts = [data.find(v) for v in values]  # next start of each value (-1: none)
        if max(nexts) < 0:  # nearly always: none in this chunk
            self.tail = data[limit:]
            return data[:limit]
        out = []
        pos = 0
        while True:
            best = length = -1
            for i, value in enumerate(values):
                at = nexts[i]
                if 0 <= at < pos:  # overlapped by the last match: look again after it
                    at = nexts[i] = data.find(value, pos)
                if at >= 0 and (best < 0 or at < best):  # a tie keeps the longer value
                    best, length = at, len(value)
            if best < 0 or best >= limit:
                break
            out.append(data[pos:best])
            out.append(MASK)
            pos = best + length
        cut = max(pos, limit)
        out.append(data[pos:cut])
        self.tail = data[cut:]
        return b"".join(out)


class Cap:
    """A log's byte budget: what fits of each write, then :func:`marker` once."""

    __slots__ = ("limit", "truncated", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.truncated = False

    def room(self) -> int:
        return self.limit - self.used

    def take(self, data: bytes) -> bytes:
        """What of ``data`` goes to the log (with the marker where the cap is reached)."""
        room = self.limit - self.used
        if len(data) <= room:
            self.used += len(data)
            return data
        if self.truncated:
            return b""
        self.truncated = True
        self.used = self.limit
        return data[:room] + marker(self.limit)


class Shaper:
    """Redaction (when there are secret values) then the cap, on bytes."""

    __slots__ = ("cap", "redactor")

    def __init__(self, limit: int, secrets: Iterable[str | bytes] = ()) -> None:
        redactor = Redactor(secrets)
        self.redactor = redactor if redactor.values else None
        self.cap = Cap(limit)

    @property
    def truncated(self) -> bool:
        return self.cap.truncated

    def feed(self, data: bytes) -> bytes:
        if self.cap.truncated:
            return b""  # dropped: no need to redact it
        return self.cap.take(data if self.redactor is None else self.redactor.feed(data))

    def finish(self) -> bytes:
        """What the redactor still holds, at the end of the stream (then nothing)."""
        if self.redactor is None:
            return b""
        return self.cap.take(self.redactor.flush())


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class PipeLog:
    """One stream (``name``: stdout or stderr) of one shard: ``pipe`` (a non-blocking read
    end) to the log file at ``path``, capped at ``limit`` bytes, ``secrets`` redacted."""

    __slots__ = ("fd", "lost", "name", "pipe", "shaper", "spliced")

    def __init__(
        self, name: str, pipe: int, path: str, limit: int, secrets: Iterable[str | bytes] = ()
    ) -> None:
        self.name = name
        self.pipe = pipe
        # not O_APPEND: splice() refuses such files. One writer per attempt's log.
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.shaper = Shaper(limit, secrets)
        self.spliced = self.shaper.redactor is None  # zero-copy while nothing is redacted
        self.lost = ""  # once a write failed: "diskfull" or "ioerror"; the rest is dropped

    @property
    def truncated(self) -> bool:
        return self.shaper.truncated

    @property
    def cut(self) -> str:
        """How this stream's output was cut short, as the exit record names it: ``""``
        (not), the stream's name (the cap), or ``NAME:diskfull`` / ``NAME:ioerror``."""
        if self.lost:
            return f"{self.name}:{self.lost}"
        return self.name if self.shaper.truncated else ""

    def pump(self, budget: int = 8) -> bool:
        """Move what the pipe holds now (at most ``budget`` transfers, so one busy shard
        cannot hold up the others); False once the pipe is at its end (every writer gone)."""
        cap = self.shaper.cap
        try:
            for _ in range(budget):
                room = cap.limit - cap.used
                if self.spliced and room > 0 and not self.lost:
                    try:
                        moved = os.splice(self.pipe, self.fd, min(room, SPLICE_BYTES))
                    except BlockingIOError:
                        raise
                    except OSError as exc:
                        if exc.errno in FULL:
                            self._lose(exc)
                        else:  # e.g. a filesystem without splice: copy from now on
                            self.spliced = False
                        continue
                    if not moved:
                        return False
                    cap.used += moved
                    continue
                data = os.read(self.pipe, READ_BYTES)
                if not data:
                    return False
                if not self.lost:
                    self._write(self.shaper.feed(data))
        except BlockingIOError:
            pass  # the pipe is empty for now
        return True

    def note(self, text: str) -> None:
        """Add the platform's own line (e.g. why the shard has no network) to the log, at
        the position the log has reached (appending to the file by path would be
        overwritten: the file is not opened O_APPEND)."""
        self._write(text.encode())

    def _write(self, data: bytes) -> None:
        if data and not self.lost:
            try:
                write_all(self.fd, data)
            except OSError as exc:  # the shard keeps running; its output is dropped
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        """Writing failed: drop the rest; end the log with the marker where possible."""
        self.lost = "diskfull" if exc.errno in FULL else "ioerror"
        mark = lost_marker(exc)
        try:
            write_all(self.fd, mark)
            return
        except OSError:
            pass
        try:  # no room after the log: over its last bytes, which have their blocks
            end = os.lseek(self.fd, 0, os.SEEK_CUR)
            if end >= len(mark):
                os.pwrite(self.fd, mark, end - len(mark))
        except OSError:
            pass

    def close(self) -> None:
        """Write what the redactor held back; close the pipe and the file."""
        self._write(self.shaper.finish())
        os.close(self.pipe)
        os.close(self.fd)
