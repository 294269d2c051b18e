"""/healthz and /readyz answer honestly (issue #17, item 6): liveness never depends on the
store; readiness is a 503 naming each failing check -- store, lease, disk, draining -- and
its fix, on the session's store, made unavailable for real."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TEST_STORE, Server, database_url_for, start_server
from sylphx._server.http import health
from sylphx._server.infra.faults import MIN_FREE_BYTES
from sylphx._server.infra.lease import Lease
from sylphx._server.store import make_engine


def _anon(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)  # no key: neither needs one


def _failing(r: httpx.Response) -> dict[str, dict[str, Any]]:
    """The failing checks of a 503 from /readyz, by name, after checking the error shape."""
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "server_unavailable" and body["message"].startswith("not ready: ")
    for d in body["details"]:
        assert d["rule"] and d["fix"] and d["field"] in body["message"], d
    return {d["field"]: d for d in body["details"]}


def _until_ready(http: httpx.Client, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = http.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return dict(r.json())
        time.sleep(0.1)


def test_healthz_and_readyz_answer_without_a_key(server: Server) -> None:
    with _anon(server) as anon:
        live = anon.get("/healthz")
        assert live.status_code == 200
        assert live.json() == {
            "ok": True,
            "executor": "local",
            "capacity": server.plane.executor.capacity().text(),
        }
        ready = anon.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ok"] is True and body["store"] == TEST_STORE
        assert body["lease"] == "holder" and "this process" in body["leaseHolder"]
        assert body["logDiskFreeBytes"] >= MIN_FREE_BYTES


def test_a_standby_is_ready_and_names_the_holder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    engine = make_engine(database_url_for(home))
    other = Lease(engine, home)  # another process of this home holds the lease first
    assert other.ensure()
    server, stop = start_server(home)
    try:
        with _anon(server) as anon:
            body = _until_ready(anon)
            assert body["lease"] == "standby" and "another process" in body["leaseHolder"]
            other.release()  # the holder goes: this process takes over
            server.wait_for(lambda: anon.get("/readyz").json().get("lease") == "holder")
    finally:
        stop()
        other.release()
        engine.dispose()


def test_draining_is_not_ready_but_alive(server: Server) -> None:
    server.plane.draining = True
    with _anon(server) as anon:
        assert "draining" in _failing(anon.get("/readyz"))
        assert anon.get("/healthz").status_code == 200


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="the sqlite pass has its own outage")
def test_postgresql_down_is_not_ready_but_alive(tmp_path: Path) -> None:
    from pgserver import PgServer

    pg = PgServer()
    pg.start()
    server, stop = start_server(tmp_path / "home", database_url=pg.create_database())
    try:
        with _anon(server) as anon:
            _until_ready(anon)
            pg.stop()
            started = time.monotonic()
            failing = _failing(anon.get("/readyz"))
            assert time.monotonic() - started < health.STORE_TIMEOUT + 2
            assert set(failing) == {"store", "lease"}, failing
            assert "PostgreSQL server is running" in failing["store"]["fix"]
            assert anon.get("/healthz").status_code == 200  # alive: no restart would help
            pg.start()
            assert _until_ready(anon)["lease"] == "holder"
    finally:
        stop()
        pg.destroy()


@pytest.mark.skipif(TEST_STORE != "sqlite", reason="the postgresql pass stops its server")
def test_sqlite_file_gone_is_not_ready_but_alive(server: Server) -> None:
    db = Path(str(server.plane.engine.url.database))
    away = db.with_name(db.name + ".away")
    with _anon(server) as anon:
        _until_ready(anon)
        db.rename(away)  # what a restart would find: no store (the pool's handles still work)
        try:
            failing = _failing(anon.get("/readyz"))
            assert set(failing) == {"store"}, failing
            assert "SQLite file" in failing["store"]["fix"]
            assert "unable to open" in failing["store"]["rule"]
            assert not db.exists()  # the check never creates an empty store in its place
            assert anon.get("/healthz").status_code == 200
        finally:
            away.rename(db)
        _until_ready(anon)


@pytest.fixture
def small_logs(tmp_path: Path) -> Iterator[Path]:
    """A home whose log folder is a 2 MiB tmpfs (root only: skipped elsewhere)."""
    logs = tmp_path / "home" / "logs"
    logs.mkdir(parents=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(logs)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    try:
        yield logs
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_a_full_log_disk_is_not_ready_and_names_the_disk(small_logs: Path) -> None:
    server, stop = start_server(small_logs.parent)
    try:
        with _anon(server) as anon:
            _until_ready(anon)
            filler = small_logs / "filler"
            filler.write_bytes(b"\0" * (2 * 1024 * 1024 - MIN_FREE_BYTES // 2))
            failing = _failing(anon.get("/readyz"))
            assert set(failing) == {"disk"}, failing
            assert str(small_logs) in failing["disk"]["rule"]
            assert "free space" in failing["disk"]["fix"]
            assert anon.get("/healthz").status_code == 200
            filler.unlink()
            _until_ready(anon)
    finally:
        stop()


def test_a_hung_store_is_a_503_in_time_and_the_loop_keeps_answering(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    calls: list[float] = []

    def hung(plane: Any) -> tuple[str | None, list[int] | None]:
        calls.append(time.monotonic())
        release.wait(30)
        return None, None

    monkeypatch.setattr(health, "STORE_TIMEOUT", 0.5)
    monkeypatch.setattr(health, "_probe_store", hung)
    with _anon(server) as anon:
        try:
            results: list[httpx.Response] = []
            probes = [
                threading.Thread(target=lambda: results.append(anon.get("/readyz")))
                for _ in range(4)
            ]
            for t in probes:
                t.start()
            time.sleep(0.1)
            started = time.monotonic()
            assert anon.get("/healthz").status_code == 200  # the loop is not held
            assert time.monotonic() - started < 0.4
            for t in probes:
                t.join()
            for r in results:
                assert "no answer within 0.5 s" in _failing(r)["store"]["rule"]
            assert len(calls) == 1  # one probe at a time: a hung store holds one thread
        finally:
            release.set()
        monkeypatch.undo()
        _until_ready(anon)


def test_each_worker_of_a_shared_home_is_ready_as_holder_or_standby(tmp_path: Path) -> None:
    from serverproc import ServerProcess

    server = ServerProcess(tmp_path / "home", workers=2)
    try:
        server.start()
        seen: dict[str, set[str]] = {}  # role -> holders named
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:  # connections go to either
            with httpx.Client(base_url=server.url, timeout=10) as fresh:
                r = fresh.get("/readyz")
            assert r.status_code == 200, r.text
            seen.setdefault(r.json()["lease"], set()).add(r.json()["leaseHolder"])
        assert set(seen) == {"holder", "standby"}, seen
        assert all("this process" in h for h in seen["holder"])
        assert all("another process" in h for h in seen["standby"])
    finally:
        server.close()


def test_an_idle_connection_outlasts_the_clients_pools(server: Server) -> None:
    """The server keeps an idle keep-alive connection longer than the SDKs' pools keep it
    (httpx drops one after 5 s, Node's fetch after 4 s). At uvicorn's default of 5 s, the
    same as the client's, a request sent on a pooled connection just as the server closed
    it failed with "Server disconnected without sending a response" (seen in CI, a Ray
    test idle ~5 s while a node was removed)."""
    host, port = server.url.removeprefix("http://").split(":")
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(6)  # idle past both pools' times
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200 "), "the idle connection was closed"


def _response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response read off ``sock`` (its head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head
