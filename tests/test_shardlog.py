"""The shard log path's pieces (executors/shardlog.py): streaming redaction, the cap, and
a real pipe drained into a real file."""

from __future__ import annotations

import itertools
import os
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sylphx._server.executors.local.shardlog import (
    MASK,
    Cap,
    PipeLog,
    Redactor,
    Shaper,
    lost_marker,
    marker,
)

VALUE = b"postgres://admin:hunter2-Zq8@db.internal/prod"


def whole(data: bytes, values: list[bytes]) -> bytes:
    """The reference: the whole stream at once, leftmost match first, the longest value
    at a position first (a regex alternation tries its branches in order)."""
    found = sorted({v for v in values if v}, key=len, reverse=True)
    if not found:
        return data
    return re.sub(b"|".join(re.escape(v) for v in found), MASK, data)


def chunked(values: list[bytes], data: bytes, cuts: list[int]) -> bytes:
    """``data`` fed to a Redactor in pieces split at ``cuts``."""
    redactor = Redactor(values)
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    out = b"".join(redactor.feed(data[a:b]) for a, b in itertools.pairwise(edges))
    return out + redactor.flush()


small = st.binary(min_size=1, max_size=6).map(lambda b: bytes(x % 3 + 97 for x in b))  # a-c


@settings(max_examples=400, deadline=None)
@given(value=small, data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400)))
def test_one_value_in_any_chunking_is_data_replace(
    value: bytes, data: bytes, cuts: list[int]
) -> None:
    data = bytes(x % 4 + 97 for x in data)  # a-d: the value shows up, split every way
    assert chunked([value], data, cuts) == data.replace(value, MASK)


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(small, min_size=1, max_size=4),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400)),
)
def test_many_values_in_any_chunking_are_the_whole_stream_redacted(
    values: list[bytes], data: bytes, cuts: list[int]
) -> None:
    """Overlapping values, values that are prefixes of others, values longer than the
    chunks: the result is the whole stream's, and no value is left in it."""
    data = bytes(x % 4 + 97 for x in data)
    out = chunked(values, data, cuts)
    assert out == whole(data, values)
    for value in values:
        assert value not in out.replace(MASK, b"|")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 4096])
def test_a_value_split_over_chunks_and_repeated(size: int) -> None:
    text = b"a " + VALUE + b" b " + VALUE + VALUE + b" c" + VALUE * 1000
    redactor = Redactor([VALUE.decode(), "short"])
    out = b"".join(redactor.feed(text[i : i + size]) for i in range(0, len(text), size))
    assert out + redactor.flush() == b"a *** b ****** c" + MASK * 1000


def test_a_value_longer_than_every_chunk() -> None:
    value = os.urandom(99_999) + b"v"  # never ends in z: the near-copy below is not it
    data = b"x" * 10 + value + b"y" + value[:-1] + b"z"
    assert chunked([value], data, list(range(0, len(data), 4096))) == (
        b"x" * 10 + MASK + b"y" + value[:-1] + b"z"
    )


def test_no_values_pass_everything_through_at_once() -> None:
    redactor = Redactor(["", b""])
    assert redactor.feed(b"abc") == b"abc" and redactor.flush() == b""


def test_the_cap_keeps_what_fits_then_the_marker_once() -> None:
    cap = Cap(10)
    assert cap.take(b"12345") == b"12345"
    assert cap.take(b"67890") == b"67890"  # exactly at the cap: nothing dropped yet
    assert not cap.truncated
    assert cap.take(b"x") == marker(10)
    assert cap.truncated and cap.take(b"more") == b""
    cut = Cap(4)
    assert cut.take(b"abcdef") == b"abcd" + marker(4)
    assert b"SYLPHX_MAX_LOG_BYTES" in marker(4)


def test_the_shaper_redacts_before_it_counts() -> None:
    shaper = Shaper(8, [b"secret"])
    held = shaper.feed(b"a secret") + shaper.feed(b" b")  # the tail may still be a value
    assert held + shaper.finish() == b"a *** b"  # 7 bytes: within the cap of 8
    assert not shaper.truncated
    over = Shaper(4, [b"secret"])
    assert over.feed(b"secret secret") == b"*** " + marker(4)
    assert over.truncated and over.feed(b"secret") == b"" and over.finish() == b""


def pump_all(log: PipeLog) -> None:
    """Drain ``log``'s pipe to its end, as the supervisor's loop does."""
    import select

    poller = select.epoll()
    poller.register(log.pipe, select.EPOLLIN)
    try:
        while True:
            poller.poll(5)
            if not log.pump():
                return
    finally:
        poller.close()


def feed_pipe(data: bytes, pieces: int = 1) -> tuple[int, threading.Thread]:
    """A pipe's read end (non-blocking) and the thread that writes ``data`` into it."""
    out, end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(out, False)

    def write() -> None:
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            view = memoryview(data)[i : i + step]
            while view:
                view = view[os.write(end, view) :]
        os.close(end)

    thread = threading.Thread(target=write)
    thread.start()
    return out, thread


@pytest.mark.parametrize("secrets", [[], [b"hunter2"]])
def test_a_pipe_past_the_cap_is_drained_to_its_end(tmp_path: Path, secrets: list[bytes]) -> None:
    """1 MiB into a 64 KiB cap: the writer never blocks for good (everything is read), the
    file holds the first 64 KiB and the marker."""
    data = os.urandom(1 << 20).replace(b"h", b"x")  # no accidental "hunter2"
    pipe, writer = feed_pipe(data, pieces=64)
    log = PipeLog("stdout", pipe, str(tmp_path / "out"), 1 << 16, secrets)
    pump_all(log)
    writer.join(timeout=10)
    assert not writer.is_alive() and log.truncated
    log.close()
    assert (tmp_path / "out").read_bytes() == data[: 1 << 16] + marker(1 << 16)


def test_a_pipe_with_a_secret_is_redacted_in_the_file(tmp_path: Path) -> None:
    data = (b"token=" + VALUE + b"\n") * 10_000
    pipe, writer = feed_pipe(data, pieces=997)  # values split across writes
    log = PipeLog("stderr", pipe, str(tmp_path / "err"), 1 << 30, [VALUE.decode()])
    pump_all(log)
    writer.join(timeout=10)
    log.close()
    assert (tmp_path / "err").read_bytes() == b"token=***\n" * 10_000
    assert not log.truncated


def test_a_pipe_without_secrets_is_copied_exactly_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"earlier\n")
    data = os.urandom(3 << 20)
    pipe, writer = feed_pipe(data, pieces=7)
    log = PipeLog("stdout", pipe, str(path), 1 << 30)
    pump_all(log)
    writer.join(timeout=10)
    log.close()
    assert path.read_bytes() == b"earlier\n" + data


def test_a_note_lands_where_the_log_is(tmp_path: Path) -> None:
    pipe, writer = feed_pipe(b"first\n")
    log = PipeLog("stderr", pipe, str(tmp_path / "err"), 1 << 20)
    pump_all(log)
    writer.join(timeout=10)
    log.note("sylphx: a note\n")
    log.close()
    assert (tmp_path / "err").read_bytes() == b"first\nsylphx: a note\n"


@pytest.mark.parametrize("secrets", [[], [b"hunter2"]])
def test_a_log_that_cannot_be_written_is_drained_and_named(
    tmp_path: Path, secrets: list[bytes]
) -> None:
    """/dev/full refuses every write with ENOSPC: the pipe is still drained to its end (the
    writer never blocks), the rest dropped, and the stream named ``NAME:diskfull``."""
    pipe, writer = feed_pipe(os.urandom(1 << 20), pieces=16)
    log = PipeLog("stdout", pipe, "/dev/full", 1 << 30, secrets)
    pump_all(log)
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert (log.lost, log.cut, log.truncated) == ("diskfull", "stdout:diskfull", False)
    log.close()


def test_a_log_cut_by_its_cap_is_named_by_its_stream_alone(tmp_path: Path) -> None:
    pipe, writer = feed_pipe(b"x" * 5000)
    log = PipeLog("stderr", pipe, str(tmp_path / "err"), 1000)
    pump_all(log)
    writer.join(timeout=10)
    log.close()
    assert (log.cut, log.lost) == ("stderr", "")


def test_the_lost_marker_says_why() -> None:
    full = lost_marker(OSError(28, "No space left on device"))
    assert full == b"\n[sylphx: log truncated: No space left on device; further output dropped]\n"
