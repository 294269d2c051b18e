"""A control plane as a real subprocess (``python -m sylphx server``), to kill and restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from conftest import database_url_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``sylphx server`` on loopback for one SYLPHX_HOME; restartable on the same store."""

    def __init__(self, home: Path, *, workers: int = 1, **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SYLPHX_")},
            "SYLPHX_HOME": str(home),
            "SYLPHX_DATABASE_URL": database_url_for(home),
            "SYLPHX_LOCAL_CPUS": "2",
            "SYLPHX_LOCAL_MEMORY": "16GiB",
            "SYLPHX_RECONCILE_INTERVAL": "0.1",
            "SYLPHX_KILL_GRACE_SECONDS": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self, wait: bool = True) -> None:
        argv = [sys.executable, "-m", "sylphx", "server", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--workers", str(self.workers)]
        log = open(self.home.parent / f"{self.home.name}-server.log", "ab")  # noqa: SIM115
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_healthy()
            self._authenticate()

    def _authenticate(self) -> None:
        """Give the client an API key of org ``test`` in this server's store (made once)."""
        if "authorization" in self.http.headers:
            return
        from sylphx._server.store import make_engine, session_factory
        from sylphx._server.tenancy import orgs

        engine = make_engine(self.env["SYLPHX_DATABASE_URL"])
        try:
            with session_factory(engine).begin() as s:
                if s.get(orgs.OrgRow, "org_test") is None:
                    orgs.create_org(s, "test", plan="enterprise", now=_now(), org_id="org_test")
                token = orgs.create_key(s, "org_test", name="tests", now=_now())[1]
        finally:
            engine.dispose()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, "server died"
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become healthy")

    def kill9(self) -> None:
        """SIGKILL the server's whole process group (API workers too), never its shards."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def term(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()
        self.http.close()

    def submit(self, **spec: Any) -> dict[str, Any]:
        r = self.http.post("/v1/runs", json=spec)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def get(self, run_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/runs/{run_id}").json())

    def wait(self, run_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(run_id)
            if run["status"] in ("succeeded", "partial", "failed", "cancelled", "timed_out"):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} not terminal: {self.get(run_id)}")


def _now() -> datetime:
    return datetime.now(UTC)
