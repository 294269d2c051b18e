"""Shard logs as written by the local executor's supervisor: secret values masked before
they reach the disk, and a size cap per stream that keeps the shard running."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from conftest import Server
from sylphx._server.executors.local.shardlog import marker
from sylphx._server.store import AttemptRow

VALUE = "postgres://admin:hunter2-Zq8@db.internal/prod"
ROTATED = "postgres://admin:n3w-Pa55@db.internal/prod"


def log_files(server: Server, run_id: str) -> list[tuple[Path, Path]]:
    """(stdout, stderr) files of each attempt of the run, on this host."""
    with server.plane.reads() as s:
        rows = s.scalars(select(AttemptRow).where(AttemptRow.run_id == run_id))
        return [(Path(r.stdout_path or ""), Path(r.stderr_path or "")) for r in rows]


def text(server: Server, run_id: str, stream: str = "stdout") -> str:
    r = server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": 0, "stream": stream})
    assert r.status_code == 200, r.text
    return r.text


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_secret_values_never_reach_the_log_files(server: Server) -> None:
    assert server.http.post("/v1/secrets", json={"name": "DB_URL", "value": VALUE}).is_success
    script = (
        'printf %s "${DB_URL%%@*}"; sleep 0.3; printf "@%s\\n" "${DB_URL#*@}";'  # split
        ' yes "$DB_URL" 2>/dev/null | head -n 10000; echo "err=$DB_URL" >&2'
    )
    run = server.submit(command=["sh", "-c", script], secrets=["DB_URL"])
    assert server.wait(run["id"])["status"] == "succeeded"
    ((out, err),) = log_files(server, run["id"])
    expected_out = b"***\n" * 10_001
    assert out.read_bytes() == expected_out  # on disk, not just through the API
    assert err.read_bytes() == b"err=***\n"
    home = server.settings.home
    assert files_holding(home, VALUE.encode()) == []  # not in a batch file either
    assert text(server, run["id"]).encode() == expected_out

    # rotating or deleting the secret leaves old logs as they were written
    assert server.http.post("/v1/secrets", json={"name": "DB_URL", "value": ROTATED}).is_success
    assert text(server, run["id"]).encode() == expected_out
    assert out.read_bytes() == expected_out
    assert server.http.delete("/v1/secrets/DB_URL").status_code == 204
    assert text(server, run["id"], "stderr") == "err=***\n"
    assert VALUE not in text(server, run["id"]) and ROTATED not in text(server, run["id"])


def test_a_run_without_secrets_logs_as_before(server: Server) -> None:
    server.http.post("/v1/secrets", json={"name": "DB_URL", "value": VALUE})
    script = "echo one; echo two >&2; printf 'no newline ***'"
    run = server.submit(command=["sh", "-c", script])
    assert server.wait(run["id"])["status"] == "succeeded"
    ((out, err),) = log_files(server, run["id"])
    assert out.read_bytes() == b"one\nno newline ***"
    assert err.read_bytes() == b"two\n"
    (shard,) = server.shards(run["id"])
    assert shard["logTruncated"] == [] and shard["history"][0]["logTruncated"] == []


def test_output_past_the_cap_is_dropped_and_the_shard_keeps_running(
    make_server: Callable[..., Server],
) -> None:
    cap = 64 << 10
    server = make_server(max_log_bytes=cap)
    script = "head -c 1048576 /dev/zero; echo still-alive >&2; exit 0"
    run = server.submit(command=["sh", "-c", script])
    assert server.wait(run["id"])["status"] == "succeeded"  # its writes kept succeeding
    ((out, err),) = log_files(server, run["id"])
    data = out.read_bytes()
    assert len(data) <= cap + len(marker(cap))
    assert data == b"\0" * cap + marker(cap)
    assert data.endswith(
        b"log truncated at 65536 bytes (SYLPHX_MAX_LOG_BYTES); further output dropped]\n"
    )
    assert err.read_bytes() == b"still-alive\n"
    (shard,) = server.shards(run["id"])
    assert shard["status"] == "succeeded" and shard["exitCode"] == 0
    assert shard["logTruncated"] == ["stdout"]
    assert shard["history"][0]["logTruncated"] == ["stdout"]


def test_the_cap_applies_to_redacted_output_too(make_server: Callable[..., Server]) -> None:
    cap = 4096
    server = make_server(max_log_bytes=cap)
    server.http.post("/v1/secrets", json={"name": "TOKEN", "value": "t0ps3cret"})
    script = 'yes "$TOKEN" 2>/dev/null | head -n 100000 >&2; echo fine'
    run = server.submit(command=["sh", "-c", script], secrets=["TOKEN"])
    assert server.wait(run["id"])["status"] == "succeeded"
    ((out, err),) = log_files(server, run["id"])
    assert out.read_bytes() == b"fine\n"
    assert err.read_bytes() == (b"***\n" * 2000)[:cap] + marker(cap)
    (shard,) = server.shards(run["id"])
    assert shard["logTruncated"] == ["stderr"]


def test_logs_from_before_masking_at_capture_are_still_masked_when_served(
    server: Server,
) -> None:
    """An attempt that existed before migration 0008 (``legacy_log``) holds plaintext on
    disk: it is masked as it is served, with the secret's current value (the old way)."""
    assert server.http.post("/v1/secrets", json={"name": "DB_URL", "value": VALUE}).is_success
    run = server.submit(command=["true"], secrets=["DB_URL"])
    server.wait(run["id"])
    with server.plane.sessions.begin() as s:
        attempt = s.scalars(select(AttemptRow).where(AttemptRow.run_id == run["id"])).one()
        attempt.legacy_log = True
        assert attempt.stdout_path is not None
        Path(attempt.stdout_path).write_text(f"old line {VALUE} end\n")  # as the old code did
    got = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).text
    assert got == "old line *** end\n"
