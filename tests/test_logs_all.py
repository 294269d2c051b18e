"""Every shard's log in one response (issue #22, item 2): ``GET /v1/runs/{id}/logs?all=true``
(NDJSON records of whole lines), ``Run.stream_all_logs`` and ``sylphx runs logs --all``,
against a real control plane running real shards."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from select import select as wait_readable
from typing import IO, Any

import anyio
import httpx
import pytest
from sqlalchemy import select

from conftest import Server
from sylphx import AsyncRunsClient, LogLine, RunsClient, create_client
from sylphx._cli.shard_logs import PALETTE, colour_wanted, format_line
from sylphx._core.errors import TransportError
from sylphx._core.errors import ValidationError as SylphxValidationError
from sylphx._core.indexes import of_run
from sylphx._core.states import ShardState
from sylphx._server.runs import logs as log_files
from sylphx._server.runs import shard_lines
from sylphx._server.runs.all_logs import _rounds
from sylphx._server.runs.logs import Secrets, Where
from sylphx._server.runs.shard_lines import HELD_BYTES, LONGEST_PARTIAL, Look, Reader, Shard
from sylphx._server.runs.streams import RETRY_AFTER_SECONDS, LogStreams
from sylphx._server.store import AttemptRow
from sylphx._settings import Settings

SYLPHX = [sys.executable, "-m", "sylphx"]
Following = tuple[AbstractContextManager[httpx.Response], httpx.Response]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
LINES = 6  # per shard of the 16-shard run
# each shard prints its first line, waits for the test's go (the follower is reading by
# then), and prints the rest over ~1 s, so the shards' lines interleave
TICKING = (
    'echo "s$SYLPHX_SHARD_INDEX line 1"; while [ ! -e /v/go ]; do sleep 0.05; done;'
    f' for i in $(seq 2 {LINES}); do echo "s$SYLPHX_SHARD_INDEX line $i"; sleep 0.2; done'
)
# odd shards fail, after a line on stdout (and one on stderr)
ODD_FAIL = (
    'sleep 0.3; echo "s$SYLPHX_SHARD_INDEX out"; echo "s$SYLPHX_SHARD_INDEX err" >&2;'
    " [ $((SYLPHX_SHARD_INDEX % 2)) = 0 ]"
)


def _env(server: Server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "SYLPHX_CONTEXT")}
    return env | {"SYLPHX_URL": server.url, "SYLPHX_TOKEN": server.token} | extra


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SYLPHX, *args], capture_output=True, text=True, env=_env(server), timeout=120
    )


def records(server: Server, run_id: str, **params: Any) -> list[dict[str, Any]]:
    """The NDJSON records of one all-shard response."""
    query = {"all": "true", **params}
    with server.http.stream("GET", f"/v1/runs/{run_id}/logs", params=query) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in r.iter_lines() if line]


def _first_lines(pipe: IO[bytes], n: int, timeout: float = 60) -> tuple[list[str], bytes]:
    """The pipe's first ``n`` lines (without newlines) and the bytes read past them, read
    from its file descriptor (no buffering that would hide lines from ``select``)."""
    data, deadline = b"", time.monotonic() + timeout
    while data.count(b"\n") < n:
        ready, _, _ = wait_readable([pipe.fileno()], [], [], deadline - time.monotonic())
        assert ready, f"{n} lines not there in time: {data!r}"
        chunk = os.read(pipe.fileno(), 1 << 16)
        assert chunk, f"the output ended before {n} lines: {data!r}"
        data += chunk
    *lines, rest = data.split(b"\n", n)
    return [line.decode() for line in lines], rest


def refusal(server: Server, run_id: str, **params: Any) -> dict[str, Any]:
    r = server.http.get(f"/v1/runs/{run_id}/logs", params=params)
    assert r.status_code == 422, (params, r.text)
    body: dict[str, Any] = r.json()
    assert body["error"] == "validation_error"
    return body


def test_follow_all_shows_every_line_of_16_shards_once_with_its_prefix(server: Server) -> None:
    vol_id, vol_dir = server.volume()
    run = server.submit(
        command=["sh", "-c", TICKING],
        parallelism=16,
        machine="nano",
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/v"}],
    )
    follower = subprocess.Popen(
        [*SYLPHX, "runs", "logs", run["id"], "--all", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(server),
    )
    assert follower.stdout is not None
    try:
        first, rest = _first_lines(follower.stdout, 16)  # every shard's first line
    finally:
        (vol_dir / "go").touch()  # the shards never wait past the test
    out, err = follower.communicate(timeout=120)
    assert follower.returncode == 0, err.decode()
    assert server.get(run["id"])["status"] == "succeeded"  # it ended once every shard did
    lines = first + (rest + out).decode().splitlines()
    expected = [f"[{i}] s{i} line {n}" for i in range(16) for n in range(1, LINES + 1)]
    assert Counter(lines) == Counter(expected)  # every line of every shard, exactly once
    shards = [int(re.match(r"\[(\d+)\] ", line)[1]) for line in lines]  # type: ignore[index]
    for i in range(16):  # each shard's lines in their order
        assert [line for line in lines if line.startswith(f"[{i}] ")] == [
            f"[{i}] s{i} line {n}" for n in range(1, LINES + 1)
        ]
    switches = sum(a != b for a, b in itertools.pairwise(shards))
    assert switches > 16, "the shards' lines came shard after shard, not as they arrived"
    assert not any("\x1b[" in line for line in lines)  # not a terminal: no colour


def test_the_endpoint_streams_every_shard_in_one_response_of_whole_lines(server: Server) -> None:
    script = (
        'printf "s$SYLPHX_SHARD_INDEX par"; sleep 0.4; printf "tial\\n";'
        ' echo "s$SYLPHX_SHARD_INDEX second"; sleep 0.3; printf "s$SYLPHX_SHARD_INDEX end"'
    )
    run = server.submit(command=["sh", "-c", script], parallelism=4, machine="nano")
    got = records(server, run["id"], follow="true")  # one request, one response
    assert server.get(run["id"])["status"] == "succeeded"
    by_shard: dict[int, str] = {}
    for record in got:
        assert set(record) == {"shard", "attempt", "data", "ts"}
        assert record["attempt"] == 1 and re.fullmatch(STAMP, record["ts"])
        for line in record["data"].splitlines():  # a record holds only its shard's lines
            assert line.startswith(f"s{record['shard']} "), record
        by_shard[record["shard"]] = by_shard.get(record["shard"], "") + record["data"]
    assert by_shard == {i: f"s{i} partial\ns{i} second\ns{i} end" for i in range(4)}
    datas = [r["data"] for r in got]
    assert all(d.endswith("\n") or d.endswith(" end") for d in datas)  # whole lines only
    assert not any(d.startswith("tial") for d in datas)  # the partial line waited for its end
    # without follow: the same lines, now read shard after shard
    again = records(server, run["id"])
    assert [(r["shard"], r["data"]) for r in again] == [
        (i, data) for i in range(4) for data in (f"s{i} partial\ns{i} second\n", f"s{i} end")
    ]
    chosen = records(server, run["id"], indices="1,3")
    assert [r["shard"] for r in chosen] == [1, 1, 3, 3]


def test_following_moves_on_to_retries_with_their_attempt(server: Server) -> None:
    script = 'echo "try $SYLPHX_SHARD_ATTEMPT"; [ "$SYLPHX_SHARD_ATTEMPT" -ge 2 ]'
    run = server.submit(
        command=["sh", "-c", script],
        parallelism=2,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=1,
        retryBackoff={"initialSeconds": 0},
    )
    got = records(server, run["id"], follow="true")
    assert server.get(run["id"])["status"] == "succeeded"
    seen = sorted((r["shard"], r["attempt"], r["data"]) for r in got)
    # the first attempt's line may be missed if it ended before the stream looked
    assert {(i, 2, "try 2\n") for i in range(2)} <= set(seen)
    assert all(data == f"try {attempt}\n" for _, attempt, data in seen)


def test_failed_selects_only_the_shards_that_failed(server: Server) -> None:
    run = server.submit(command=["sh", "-c", ODD_FAIL], parallelism=4, machine="nano")
    # following with --failed: each failed shard whole once it ended, then the end
    followed = cli(server, "runs", "logs", run["id"], "--all", "--failed", "--follow")
    assert followed.returncode == 0, followed.stderr
    assert server.get(run["id"])["status"] in ("partial", "failed")
    assert sorted(followed.stdout.splitlines()) == ["[1] s1 out", "[3] s3 out"]
    ended = cli(server, "runs", "logs", run["id"], "--all", "--failed", "--stderr")
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.splitlines() == ["[1] s1 err", "[3] s3 err"]
    got = records(server, run["id"], failed="true")
    assert [(r["shard"], r["data"]) for r in got] == [(1, "s1 out\n"), (3, "s3 out\n")]
    assert [r["shard"] for r in records(server, run["id"], failed="true", indices="0-1")] == [1]
    every = cli(server, "runs", "logs", run["id"], "--all")
    assert every.stdout.splitlines() == [f"[{i}] s{i} out" for i in range(4)]


def test_no_prefix_and_timestamps(server: Server) -> None:
    run = server.submit(command=["sh", "-c", ODD_FAIL], parallelism=4, machine="nano")
    server.wait(run["id"])
    plain = cli(server, "runs", "logs", run["id"], "--all", "--no-prefix")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [f"s{i} out" for i in range(4)]
    stamped = cli(server, "runs", "logs", run["id"], "--all", "--timestamps")
    assert stamped.returncode == 0, stamped.stderr
    lines = stamped.stdout.splitlines()
    assert len(lines) == 4
    window = (datetime.now(UTC) - timedelta(minutes=2), datetime.now(UTC))
    for i, line in enumerate(lines):
        m = re.fullmatch(rf"\[(\d+)\] ({STAMP}) (.*)", line)
        assert m is not None, line
        assert (int(m[1]), m[3]) == (i, f"s{i} out")
        assert window[0] <= datetime.fromisoformat(m[2]) <= window[1]
    bare = cli(server, "runs", "logs", run["id"], "--all", "--no-prefix", "--timestamps")
    assert all(re.fullmatch(rf"{STAMP} s\d out", line) for line in bare.stdout.splitlines())
    one = cli(server, "runs", "logs", run["id"], "--shard", "2", "--timestamps")
    assert one.returncode == 0, one.stderr
    assert re.fullmatch(rf"{STAMP} s2 out\n", one.stdout)
    prefixed = cli(server, "runs", "logs", run["id"], "--shard", "2", "--prefix")
    assert prefixed.stdout == "[2] s2 out\n"


def test_one_shard_run_needs_no_shard_and_more_shards_say_what_to_pass(server: Server) -> None:
    one = server.submit(command=["sh", "-c", "echo only"])
    many = server.submit(command=["true"], parallelism=3, machine="nano")
    server.wait(one["id"])
    server.wait(many["id"])
    got = cli(server, "runs", "logs", one["id"])
    assert (got.returncode, got.stdout) == (0, "only\n"), got.stderr
    refused = cli(server, "runs", "logs", many["id"])
    assert refused.returncode == 2
    assert "--shard INDEX" in refused.stderr and "--all" in refused.stderr
    for args, words in [
        (["--all", "--shard", "1"], "--shard"),
        (["--all", "--merge"], "--merge"),
        (["--all", "--attempt", "1"], "--attempt"),
        (["--failed"], "--all"),
        (["--shard", "0", "--merge"], "--merge"),
    ]:
        bad = cli(server, "runs", "logs", many["id"], *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert words in bad.stderr, (args, bad.stderr)


def test_bad_combinations_are_a_422_naming_the_field_and_the_fix(server: Server) -> None:
    run = server.submit(command=["true"], parallelism=2, machine="nano")
    server.wait(run["id"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"all": "true", "shard": "0"}, "shard"),
        ({"all": "true", "merge": "true"}, "merge"),
        ({"all": "true", "attempt": "1"}, "attempt"),
        ({"indices": "0", "shard": "1"}, "shard"),
        ({"failed": "true", "shard": "0"}, "failed"),
        ({"indices": "0-x"}, "indices"),
        ({"indices": "1,5"}, "indices"),  # the run has shards 0 and 1
        ({"all": "true", "indices": ""}, "indices"),
        ({}, "shard"),
    ]
    for params, field in cases:
        body = refusal(server, run["id"], **params)
        (detail,) = body["details"]
        assert detail["field"] == field, (params, body)
        assert detail["fix"] and "Fix:" in body["message"], (params, body)
    assert "all=true" in refusal(server, run["id"])["details"][0]["fix"]


def test_another_orgs_run_is_a_404(server: Server) -> None:
    run = server.submit(command=["sh", "-c", "echo mine"], parallelism=2, machine="nano")
    server.wait(run["id"])
    with server.client(server.new_org("other")) as other:
        for params in ({"all": "true"}, {"all": "true", "follow": "true"}, {"indices": "0"}):
            r = other.get(f"/v1/runs/{run['id']}/logs", params=params)
            assert r.status_code == 404, r.text
            assert r.json()["error"] == "not_found" and "mine" not in r.text
        r = other.get(f"/v1/runs/{run['id']}/logs", params={"all": "true", "indices": "9"})
        assert r.status_code == 404  # not a 422 that would tell the run's size
    assert len(records(server, run["id"])) == 2


def test_the_sdk_yields_log_lines_from_one_request(server: Server) -> None:
    run_view = server.submit(command=["sh", "-c", ODD_FAIL], parallelism=4, machine="nano")
    config = create_client(server.url, token=server.token)
    sent: list[str] = []
    config.http().event_hooks["request"].append(lambda request: sent.append(request.url.path))
    try:
        run = RunsClient.get(config, run_view["id"])
        sent.clear()
        followed = list(run.stream_all_logs())  # follows by default: until every shard ended
        assert sent == [f"/v1/runs/{run.id}/logs"]  # one request for all four shards
        assert [(x.shard, x.attempt, x.line) for x in followed if x.shard == 2] == [
            (2, 1, "s2 out")
        ]
        assert sorted(x.line for x in followed) == [f"s{i} out" for i in range(4)]
        assert all(isinstance(x, LogLine) and x.ts.tzinfo is not None for x in followed)
        failed = list(run.stream_all_logs("stderr", follow=False, failed=True))
        assert [(x.shard, x.line) for x in failed] == [(1, "s1 err"), (3, "s3 err")]
        chosen = list(run.stream_all_logs(follow=False, indices=[0, 3]))
        assert [x.line for x in chosen] == ["s0 out", "s3 out"]

        async def async_lines() -> list[tuple[int, str]]:
            handle = await AsyncRunsClient.get(config, run.id)
            try:
                return [(x.shard, x.line) async for x in handle.stream_all_logs(indices="2-3")]
            finally:
                await config.aclose()

        assert asyncio.run(async_lines()) == [(2, "s2 out"), (3, "s3 out")]
    finally:
        config.close()


def test_prefix_colours_are_stable_per_shard_and_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    def shown(shard: int, **kw: bool) -> str:
        line = LogLine(shard=shard, attempt=1, line="hi", ts=ts)
        return format_line(line, **({"prefix": True, "timestamps": False, "colour": True} | kw))

    assert shown(7) == shown(7) != shown(8)
    colour = shown(7).partition("[7]")[0]  # the escape that starts the prefix
    assert shown(7 + len(PALETTE)).startswith(colour) and not shown(8).startswith(colour)
    assert "\x1b[" in shown(7) and shown(7).endswith("[7]\x1b[0m hi\n")
    assert shown(7, colour=False) == "[7] hi\n"
    assert shown(7, colour=False, timestamps=True) == "[7] 2026-01-02T03:04:05.678Z hi\n"

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour_wanted(Tty())  # type: ignore[arg-type]
    assert not colour_wanted(Tty(), no_color=True)  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(Tty())  # type: ignore[arg-type]


def test_a_legacy_log_is_masked_in_the_all_shard_stream_too(server: Server) -> None:
    """As the one-shard stream does (tests/test_logs.py): a log from before secrets were
    masked at capture is masked as it is served, with the secret's current value."""
    value = "postgres://admin:hunter2-Zq8@db.internal/prod"
    assert server.http.post("/v1/secrets", json={"name": "DB_URL", "value": value}).is_success
    run = server.submit(command=["true"], secrets=["DB_URL"], parallelism=2, machine="nano")
    server.wait(run["id"])
    with server.plane.sessions.begin() as s:
        for attempt in s.scalars(select(AttemptRow).where(AttemptRow.run_id == run["id"])):
            attempt.legacy_log = True
            assert attempt.stdout_path is not None
            Path(attempt.stdout_path).write_text(f"old {value} line\nno newline {value}")
    got = records(server, run["id"])
    assert {r["shard"] for r in got} == {0, 1}
    assert all(value not in r["data"] for r in got)
    text = "".join(r["data"] for r in got if r["shard"] == 1)
    assert text == "old *** line\nno newline ***"


# -- framing: a record is one line, whatever its data holds ---------------------------------

SEPARATORS = "a\u2028b\u0085c"  # line breaks to str.splitlines (and to httpx's aiter_lines)


def test_unicode_line_separators_in_a_line_come_through_intact(server: Server) -> None:
    run = server.submit(command=["sh", "-c", r"printf 'a\342\200\250b\302\205c\n'"])
    server.wait(run["id"])
    with server.http.stream("GET", f"/v1/runs/{run['id']}/logs", params={"all": "true"}) as r:
        body = r.read()
    assert body.isascii() and body.count(b"\n") == 1  # one record, every non-ASCII escaped
    assert json.loads(body)["data"] == SEPARATORS + "\n"
    got = subprocess.run(
        [*SYLPHX, "runs", "logs", run["id"], "--all"],
        capture_output=True,
        env=_env(server, PYTHONIOENCODING="utf-8"),
        timeout=120,
    )
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode() == f"[0] {SEPARATORS}\n"
    with create_client(server.url, token=server.token) as config:
        handle = RunsClient.get(config, run["id"])
        assert [x.line for x in handle.stream_all_logs()] == [SEPARATORS]


def test_the_sdk_cuts_records_at_newlines_only_and_refuses_one_that_does_not_parse(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = server.submit(command=["sh", "-c", "echo x"], parallelism=2, machine="nano")
    server.wait(run["id"])
    raw = '{"shard": 0, "attempt": 1, "data": "%s\\n", "ts": "2026-01-02T03:04:05.678Z"}\n'
    # a server that wrote the separators raw (as one before this fix did)
    old = (raw % SEPARATORS).encode()
    monkeypatch.setattr(shard_lines.Shard, "_record", lambda self, data: [old] if data else [])
    config = create_client(server.url, token=server.token)
    try:
        handle = RunsClient.get(config, run["id"])
        assert [x.line for x in handle.stream_all_logs(follow=False)] == [SEPARATORS] * 2
        cut = [b'{"shard": 0, "attempt": 1, "da\n']
        monkeypatch.setattr(shard_lines.Shard, "_record", lambda self, data: cut if data else [])
        with pytest.raises(TransportError, match="unexpected log record"):
            list(handle.stream_all_logs(follow=False))
    finally:
        config.close()


# -- followed log streams: capped, and freed however they end ------------------------------


def _following(client: httpx.Client, run_id: str, **params: str) -> Following:
    """An open followed log stream (its headers came: the server holds its slot)."""
    query = {"follow": "true", **params}
    stream = client.stream("GET", f"/v1/runs/{run_id}/logs", params=query)
    response = stream.__enter__()
    assert response.status_code == 200, response.read()
    return stream, response


def _refused(client: httpx.Client, run_id: str, limit: str, **params: str) -> None:
    r = client.get(f"/v1/runs/{run_id}/logs", params={"follow": "true", **params})
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["error"] == "quota_exceeded" and "Fix:" in body["message"], body
    assert r.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    (detail,) = body["details"]
    assert detail["limit"] == limit and detail["field"] == "follow", detail


def test_followed_log_streams_are_capped_per_org_and_per_process(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(max_log_streams_per_org=2, max_log_streams=3)
    streams = server.plane.runs.log_streams
    mine = server.submit(command=["sleep", "60"], machine="nano")["id"]
    other_token = server.new_org("other")
    other = server.client(other_token)
    theirs = replace(server, http=other, token=other_token).submit(
        command=["sleep", "60"], machine="nano"
    )["id"]
    opened = [_following(server.http, mine, all="true"), _following(server.http, mine, shard="0")]
    try:
        assert (len(streams), streams.open_for("org_test")) == (2, 2)
        _refused(server.http, mine, "orgLogStreams", shard="0")  # the org's cap: 2
        _refused(server.http, mine, "orgLogStreams", all="true")
        assert server.http.get(f"/v1/runs/{mine}/logs", params={"shard": 0}).status_code == 200
        # a refused or failed request holds nothing
        r = other.get(f"/v1/runs/{mine}/logs", params={"follow": "true", "all": "true"})
        assert r.status_code == 404 and len(streams) == 2
        opened.append(_following(other, theirs, all="true"))  # the third of the process
        _refused(other, theirs, "logStreams", shard="0")  # the process's cap: 3
        opened.pop(0)[0].__exit__(None, None, None)  # one of mine ends: a slot is free again
        server.wait_for(lambda: len(streams) == 2, timeout=10)
        opened.append(_following(other, theirs, shard="0"))
        assert (streams.open_for("org_test"), len(streams)) == (1, 3)
    finally:
        for stream, _ in opened:
            stream.__exit__(None, None, None)
        server.http.post(f"/v1/runs/{mine}/cancel")
        other.post(f"/v1/runs/{theirs}/cancel")
        other.close()
    server.wait_for(lambda: len(streams) == 0, timeout=10)


def test_a_stream_frees_its_slot_when_its_client_goes_away_or_it_ends(server: Server) -> None:
    streams = server.plane.runs.log_streams
    vol_id, vol_dir = server.volume()
    script = "echo first; while [ ! -e /v/go ]; do sleep 0.05; done; echo last"
    run = server.submit(
        command=["sh", "-c", script],
        parallelism=2,
        machine="nano",
        volumeMounts=[{"volumeId": vol_id, "mountPath": "/v"}],
    )
    for params in ({"all": "true"}, {"shard": "0"}):
        client = server.client(server.token)
        _, response = _following(client, run["id"], **params)
        lines = response.iter_lines()  # (kept: dropping it would close the response)
        assert "first" in next(lines)  # the stream is under way
        server.wait_for(lambda: len(streams) == 1, timeout=10)
        client.close()  # gone in the middle of the stream
        server.wait_for(lambda: len(streams) == 0, timeout=10)
    silent = server.submit(command=["sleep", "60"], machine="nano")
    for params in ({"all": "true"}, {"shard": "0"}):
        client = server.client(server.token)
        held = _following(client, silent["id"], **params)  # nothing sent but the headers
        server.wait_for(lambda: len(streams) == 1, timeout=10)
        client.close()
        server.wait_for(lambda: len(streams) == 0, timeout=10)
        held[0].__exit__(None, None, None)
    server.http.post(f"/v1/runs/{silent['id']}/cancel")
    # one that ends with its run frees its slot too
    ended = threading.Thread(target=records, args=(server, run["id"]), kwargs={"follow": "true"})
    ended.start()
    server.wait_for(lambda: len(streams) == 1, timeout=10)
    (vol_dir / "go").touch()
    ended.join(timeout=60)
    assert not ended.is_alive() and len(streams) == 0


def test_the_stream_caps_are_settings() -> None:
    settings = Settings.from_env({"SYLPHX_HOME": "/tmp/sylphx-settings-test"})
    assert (settings.max_log_streams_per_org, settings.max_log_streams) == (32, 512)
    env = {"SYLPHX_MAX_LOG_STREAMS_PER_ORG": "4", "SYLPHX_MAX_LOG_STREAMS": "9"}
    settings = Settings.from_env(env)
    assert (settings.max_log_streams_per_org, settings.max_log_streams) == (4, 9)
    for var in env:
        for bad in ("0", "-1", "x"):
            with pytest.raises(SylphxValidationError, match=var):
                Settings.from_env({var: bad})


def test_an_out_of_range_index_is_one_422_for_logs_and_retry() -> None:
    with pytest.raises(SylphxValidationError) as caught:
        of_run("1,5", 3, "run wrk_x")
    assert caught.value.details[0]["field"] == "indices"
    assert "index 5 does not exist: run wrk_x has 3 shards (0-2)" in caught.value.message
    for text in ("0-x", "", ","):
        with pytest.raises(SylphxValidationError, match="is not an index set"):
            of_run(text, 3, "run wrk_x")
    assert of_run("0,2", 3, "run wrk_x") == [0, 2]


# -- the reader: partial lines as bytes, a budget per response, threads, backoff -----------


def _running(path: Path) -> Look:
    return Look(ShardState.RUNNING, Where(False, 1, str(path), False))


def _reader(paths: list[Path], *, follow: bool = True) -> Reader:
    shards = [Shard(index) for index in range(len(paths))]
    return Reader(shards, Secrets(list), failed=False, follow=follow)


def _datas(out: bytes) -> list[tuple[int, str]]:
    assert out.isascii()
    return [(r["shard"], r["data"]) for r in map(json.loads, out.splitlines())]


def _drain(reader: Reader, found: dict[int, Look]) -> Iterator[tuple[int, str]]:
    """Rounds until one reads nothing: each record's (shard, data)."""
    while True:
        yield from _datas(reader.round(found))
        assert reader.held == sum(len(shard.partial) for shard in reader.shards)
        assert reader.held <= HELD_BYTES
        if not reader.moved and not reader.behind:
            return


def test_one_response_holds_a_bounded_amount_of_partial_lines(tmp_path: Path) -> None:
    line = "é" * 100_000  # 200,000 bytes without a newline yet: under the piece size
    paths = [tmp_path / f"{i}.log" for i in range(40)]  # 8 MB of partial lines in all
    for path in paths:
        path.write_bytes(line.encode())
    reader = _reader(paths)
    found = {i: _running(path) for i, path in enumerate(paths)}
    got: dict[int, str] = dict.fromkeys(range(40), "")
    for shard, data in _drain(reader, found):
        got[shard] += data
    sent = [i for i, data in got.items() if data]
    assert sent and len(sent) < 40  # the longest partials went out as pieces, not all
    assert all(set(got[i]) == {"é"} for i in sent)  # each piece cut between characters
    for path in paths:
        with path.open("ab") as fh:
            fh.write(b"\n")
    for shard, data in _drain(reader, found):
        got[shard] += data
    assert got == dict.fromkeys(range(40), line + "\n")  # every byte once, in order
    assert reader.held == 0


def test_a_character_split_across_reads_or_a_long_line_is_never_garbled(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"x\xc3")  # half of "é"
    reader, found = _reader([path]), {0: _running(path)}
    assert reader.round(found) == b"" and reader.held == 2  # waits for its newline
    with path.open("ab") as fh:
        fh.write(b"\xa9\n")
    assert list(_drain(reader, found)) == [(0, "xé\n")]
    long = "y" + "\U0001f600" * (3 * LONGEST_PARTIAL // 4)  # 4-byte characters, offset by one
    with path.open("ab") as fh:
        fh.write(long.encode() + b"\n")
    pieces = [data for _, data in _drain(reader, found)]
    assert len(pieces) > 1 and "".join(pieces) == long + "\n"  # in pieces, whole characters
    assert all(len(piece.encode()) <= 2 * LONGEST_PARTIAL for piece in pieces)


@pytest.mark.parametrize("which", ["all", "one"])
def test_a_followed_log_polls_on_its_own_threads_opens_only_grown_files_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"hello\n")
    streams = LogStreams(1, 1, threads=2)
    threads: set[int] = set()
    looked: list[float] = []
    opened: list[str] = []
    real_open = open

    def counting_open(file: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(file)
        threads.add(threading.get_ident())
        return real_open(file, *args, **kwargs)

    def look() -> Any:
        looked.append(time.monotonic())
        threads.add(threading.get_ident())
        assert streams.limiter.borrowed_tokens == 1  # on the log streams' own threads
        return (1, {0: _running(path)}) if which == "all" else _running(path).where

    monkeypatch.setattr(log_files, "open", counting_open, raising=False)

    async def follow() -> tuple[list[tuple[float, bytes]], float]:
        if which == "all":
            body = _rounds(_reader([path]), {0: _running(path)}, look, streams.run)
        else:
            one = log_files._OneShard(None, Secrets(list))
            body = log_files._one(_running(path).where, look, one, True, streams.run)
        started, got = time.monotonic(), []
        with anyio.move_on_after(3.6):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_append_later, path, 2.0)
                async for chunk in body:
                    got.append((time.monotonic() - started, chunk))
        return got, started

    loop_thread = threading.get_ident()
    got, started = anyio.run(follow)
    assert loop_thread not in threads  # no store read nor file read on the event loop
    assert [b"hello" in chunk for _, chunk in got] == [True, False]
    late = got[1][0]
    assert 2.0 <= late < 3.3  # the line written at 2 s came within a (backed-off) poll
    idle = [t - started for t in looked if t - started < 2.0]
    assert 2 <= len(idle) <= 5, idle  # not 10-20 looks: the pauses grew while idle
    after = [t - started for t in looked if t - started > late]
    assert after and after[0] - late < 0.5, (late, after)  # back to quick polls on a change
    assert len(opened) == 2, opened  # the file was opened only when it had grown


async def _append_later(path: Path, seconds: float) -> None:
    await anyio.sleep(seconds)
    with path.open("ab") as fh:
        fh.write(b"late\n")
